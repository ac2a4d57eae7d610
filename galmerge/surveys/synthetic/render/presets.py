"""Domain presets: the instrument, depth and redshift range a scene is observed with."""

from __future__ import annotations

from dataclasses import dataclass

from galmerge.errors import GalmergeError


@dataclass(frozen=True)
class Preset:
    """How one domain observes a scene.

    Fluxes are in nanomaggies (AB zero point 22.5); ``sky_sigma`` is the background noise per
    pixel in those units, ``gain`` converts source flux to detected electrons (Poisson noise).
    ``psf_fwhm`` is the (min, max) FWHM in arcsec of the first band's PSF, drawn per image;
    ``band_fwhm`` scales it for each band. ``mag_offset`` adds luminosity evolution and
    k-correction to the distance modulus (negative = brighter). ``stars_per_stamp`` and
    ``galaxies_per_stamp`` are Poisson means; at most ``draw.MAX_FIELD`` (8) field sources are
    drawn per stamp, stars first.
    """

    name: str
    description: str
    bands: tuple[str, str, str]
    pixel_scale: float
    z_range: tuple[float, float]
    mag_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    psf: str = "none"  # "none", "gaussian" or "moffat"
    psf_fwhm: tuple[float, float] = (0.0, 0.0)
    band_fwhm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    moffat_beta: float = 3.5
    sky_sigma: tuple[float, float, float] | None = None
    gain: float = 1.0
    stars_per_stamp: float = 0.0
    star_mag: tuple[float, float] = (14.0, 21.5)
    galaxies_per_stamp: float = 0.0
    galaxy_mag: tuple[float, float] = (19.5, 23.0)
    galaxy_size: tuple[float, float] = (0.3, 0.9)  # Gaussian sigma, arcsec
    stretch_scale: float = 0.03

    @property
    def noisy(self) -> bool:
        return self.sky_sigma is not None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="pristine",
            description="HST/JWST-like z~2 mock without observational effects "
            "(DeepMerge sim-to-sim source)",
            bands=("F814W", "F160W", "F356W"),
            pixel_scale=0.06,
            z_range=(1.8, 2.2),
            # star-forming galaxies at z~2 are ~1.5 mag brighter than today; the rest-frame UV
            # (F814W) is fainter and the rest-frame near-infrared (F356W) brighter
            mag_offset=(-1.0, -1.5, -1.9),
            stretch_scale=1e-4,
        ),
        Preset(
            name="noisy",
            description="the pristine scenes with HST/JWST PSFs and CANDELS-like noise "
            "(DeepMerge sim-to-sim target)",
            bands=("F814W", "F160W", "F356W"),
            pixel_scale=0.06,
            z_range=(1.8, 2.2),
            mag_offset=(-1.0, -1.5, -1.9),
            psf="gaussian",
            psf_fwhm=(0.17, 0.19),
            band_fwhm=(0.6, 1.0, 0.75),
            sky_sigma=(2.8e-4, 2.0e-4, 1.6e-4),
            gain=3e5,
            galaxies_per_stamp=1.5,
            galaxy_mag=(25.0, 28.0),
            galaxy_size=(0.05, 0.15),
            stretch_scale=1e-4,
        ),
        Preset(
            name="illustris",
            description="Illustris-1-like mocks of nearby galaxies in SDSS g,r,i without "
            "observational effects (DeepMerge II sim-to-real source)",
            bands=("g", "r", "i"),
            pixel_scale=0.396,
            z_range=(0.04, 0.07),
            stretch_scale=0.02,
        ),
        Preset(
            name="sdss",
            description='SDSS look-alike: 0.396"/px, seeing 1.1-1.8", SDSS depth in g,r,i, '
            "field stars and background galaxies (DeepMerge II sim-to-real target)",
            bands=("g", "r", "i"),
            pixel_scale=0.396,
            z_range=(0.05, 0.12),
            psf="moffat",
            psf_fwhm=(1.1, 1.8),
            band_fwhm=(1.0, 0.95, 0.9),
            moffat_beta=3.5,
            # sky-limited 1-sigma per pixel ~ 24.2-24.8 mag/arcsec^2, as in SDSS frames
            sky_sigma=(0.022, 0.028, 0.040),
            gain=900.0,
            stars_per_stamp=0.6,
            galaxies_per_stamp=3.0,
            stretch_scale=0.03,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``, or a one-line error listing the presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise GalmergeError(
            f"unknown synthetic preset '{name}'; choose one of: {', '.join(PRESETS)} "
            "(e.g. synthetic:sdss)"
        ) from None
