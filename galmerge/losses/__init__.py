"""Domain-adaptation losses, one module per method family (the tllib layout).

Each module holds a small ``nn.Module`` whose ``forward(step: StepInputs)`` returns unweighted,
named scalar loss terms; ``galmerge.losses.plugin`` registers them as strategies. Keys that
start with ``_`` are detached diagnostics: the trainer logs them but does not add them to the loss.

- ``mmd``     -- multi-kernel Gaussian MMD (Gretton et al. 2012; Long et al. 2015, DAN) with the
                 19 fixed bandwidths of DeepMerge II (Ćiprijanović et al. 2021, arXiv:2103.01373).
- ``coral``   -- CORAL, second-order alignment (Sun & Saenko 2016, "Deep CORAL", ECCV workshops).
- ``dann``    -- domain-adversarial training through gradient reversal (Ganin & Lempitsky 2015,
                 Ganin et al. 2016, JMLR); DeepMerge II's "ADA".
- ``fisher``  -- Fisher loss in trace-ratio form around learnable class centres (Zhang et al.
                 2020, "Fisher Deep Domain Adaptation", arXiv:2003.05636), as used in DeepMerge II.
- ``entropy`` -- target entropy minimisation (Grandvalet & Bengio 2005; Long et al. 2016, RTN),
                 as used in DeepMerge II.
- ``options`` -- option checking shared by the built-in strategies and third-party ones.

Importing this package does not import torch (built-in plugin modules must stay light).
"""
