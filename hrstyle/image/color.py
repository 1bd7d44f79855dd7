"""Cheap post-controls: style strength, colour preservation and the style's colour statistics.

Strength and colour preservation act per pixel; ``match_color`` is one global affine colour map
(Pitié & Kokaram's linear Monge–Kantorovich transfer), so it keeps every edge and texture of what it
is given and only moves its colour distribution (mean and covariance) onto the style's.
"""

from __future__ import annotations

import torch

# Full-range BT.601 luma/chroma (JPEG's YCbCr): Y = 0.299 R + 0.587 G + 0.114 B.
_RGB_TO_YCBCR = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)


def rgb_to_ycbcr(image: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) RGB in [0, 1] → YCbCr with Y in [0, 1] and Cb, Cr in [-0.5, 0.5]."""
    return torch.einsum("ij,...jhw->...ihw", _RGB_TO_YCBCR.to(image), image)


def ycbcr_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_ycbcr`` (not clamped)."""
    return torch.einsum("ij,...jhw->...ihw", _YCBCR_TO_RGB.to(image), image)


def preserve_color(stylized: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Keep the photo's colours: luminance (Y) of ``stylized``, chroma (CbCr) of ``original``.

    Both are (…, 3, H, W) RGB in [0, 1]; the result is clamped to [0, 1].
    """
    y = rgb_to_ycbcr(stylized)[..., :1, :, :]
    cbcr = rgb_to_ycbcr(original)[..., 1:, :, :]
    return ycbcr_to_rgb(torch.cat((y, cbcr), dim=-3)).clamp_(0, 1)


def apply_strength(stylized: torch.Tensor, original: torch.Tensor, strength: float) -> torch.Tensor:
    """Blend: ``strength`` 1 is the full style, 0 returns ``original`` exactly.

    Overwrites and returns ``stylized`` (pass a copy to keep it)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if strength == 1.0:
        return stylized
    if strength == 0.0:
        return original.clone()
    return stylized.sub_(original).mul_(strength).add_(original)  # in place: no extra full-size copy


#: Pixels per chunk when accumulating colour statistics (bounded float64 memory on huge images).
_STATS_CHUNK = 1 << 20


def color_statistics(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (3,) and covariance (3, 3) of the RGB values of a (3, H, W) or (1, 3, H, W) image.

    Float64 on the CPU, accumulated in chunks of pixels (no full-size float64 copy).
    """
    pixels = image.reshape(3, -1)
    n = pixels.shape[1]
    if n < 2:
        raise ValueError("colour statistics need at least 2 pixels")
    total = torch.zeros(3, dtype=torch.float64)
    outer = torch.zeros(3, 3, dtype=torch.float64)
    shift = pixels[:, :1].detach().to("cpu", torch.float64)  # shifted sums: no cancellation
    for start in range(0, n, _STATS_CHUNK):
        chunk = pixels[:, start:start + _STATS_CHUNK].detach().to("cpu", torch.float64) - shift
        total += chunk.sum(1)
        outer += chunk @ chunk.T
    mean = total / n
    cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
    return mean + shift[:, 0], cov


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues, rounding noise, clamped to 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T


#: The colour match's contrast-gain cap at inference (``max_gain``): the graduated match stretched the bands of
#: the shipped styles' outputs up to 9x (a calm sea under a style's reflections: orange, pink and cyan streaks;
#: grass under a snow band: salt-and-pepper frost); at 2 both calm down at the same regional distance on the
#: five segmented pairs (docs/recipes.md, "The gain cap").
MAX_GAIN = 2.0


def color_transfer_map(source: tuple[torch.Tensor, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor],
                       strength: float = 1.0, max_gain: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map ``x -> A x + b`` taking colour statistics ``source`` to ``target``.

    Both are ``(mean (3,), cov (3, 3))``. ``A`` is the linear Monge–Kantorovich solution
    ``S^-1/2 (S^1/2 T S^1/2)^1/2 S^-1/2`` (the least colour displacement that gives the target
    covariance; symmetric). ``max_gain``: ``A``'s eigenvalues (its contrast gain in each colour
    direction) are capped there, so a flat source is not stretched into noise, streaks or speckle
    (the means still map exactly; the target's spread is then not reached); None = uncapped.
    ``strength`` in [0, 1] blends the map with the identity (0 = no change).
    Returns float64 ``(A (3, 3), b (3,))``.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour-match strength must be in [0, 1], got {strength}")
    if max_gain is not None and not max_gain >= 1:  # below 1 it would flatten every colour, not cap a stretch
        raise ValueError(f"the colour map's maximum gain must be >= 1, got {max_gain}")
    (mu_s, cov_s), (mu_t, cov_t) = source, target
    eye = torch.eye(3, dtype=torch.float64)
    # A small ridge: a flat or grey image has a singular covariance (no direction to stretch).
    cov_s, cov_t = cov_s.double() + 1e-5 * eye, cov_t.double() + 1e-5 * eye
    root = sqrtm_psd(cov_s)
    inv_root = torch.linalg.inv(root)
    a = inv_root @ sqrtm_psd(root @ cov_t @ root) @ inv_root
    if max_gain is not None:
        values, vectors = torch.linalg.eigh((a + a.T) / 2)
        a = vectors @ torch.diag(values.clamp(max=max_gain)) @ vectors.T
    a = strength * a + (1.0 - strength) * eye
    b = (mu_s.double() + strength * (mu_t.double() - mu_s.double())) - a @ mu_s.double()
    return a, b


#: Pixels per band of ``match_color``: each band's temporary stays a few MB however large the image.
_MATCH_BAND_PIXELS = 1 << 18


def match_color(image: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor], strength: float = 1.0,
                inplace: bool = False, max_gain: float | None = None) -> torch.Tensor:
    """Give ``image`` the colour statistics ``target`` = (mean (3,), cov (3, 3)) of a style.

    ``image`` is one (3, H, W) or (1, 3, H, W) RGB image in [0, 1] (its statistics are taken over
    all of it); returns a tensor of the same shape and dtype, clamped to [0, 1]: a new one, or
    ``image`` itself with ``inplace`` (no second full-size copy: 288 MB at 24 MP). Applied in bands
    of rows. ``max_gain``: see ``color_transfer_map``.
    """
    a, b = color_transfer_map(color_statistics(image), target, strength, max_gain)
    h = image.shape[-2]
    return _map_rows(image, a.expand(h, 3, 3), b[:, None].expand(3, h), inplace)


def _map_rows(image: torch.Tensor, row_a: torch.Tensor, row_b: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``image`` (3, H, W) or (1, 3, H, W) with each row ``y`` mapped by ``x -> row_a[y] x + row_b[:, y]``
    ((H, 3, 3), (3, H)), clamped to [0, 1]; computed in bands of rows (a few MB of temporaries at any size)."""
    row_a, row_b = row_a.to(image.device, image.dtype), row_b.to(image.device, image.dtype)
    out = image if inplace else torch.empty_like(image)
    rows = max(1, _MATCH_BAND_PIXELS // image.shape[-1])
    for top in range(0, image.shape[-2], rows):
        band = image[..., top:top + rows, :]
        mapped = torch.einsum("hij,...jhw->...ihw", row_a[top:top + rows], band)
        out[..., top:top + rows, :] = mapped.add_(row_b[:, top:top + rows, None]).clamp_(0, 1)
    return out


# The graduated colour transfer: one colour transfer per horizontal band, blended down the image.
# Photos and photo styles share a vertical layout (sky above, ground below), so matching the colours
# of the photo's top to the style's top and its bottom to the style's bottom finds most region
# counterparts without any segmentation: on the five segmented pairs it measures 9.2 on the regional
# colour distance against 14.1 for the global transfer (docs/recipes.md, "The graduated colour match").

#: Default band count and width (Gaussian sigma, as a fraction of the image height) of the graduated
#: transfer: the best of 2-12 bands and widths 0.05-0.4 on the five segmented pairs (docs/recipes.md).
BANDS, BAND_WIDTH = 8, 0.08


def band_weights(height: int, bands: int = BANDS, width: float = BAND_WIDTH) -> torch.Tensor:
    """(height, bands) float64 weights of each image row in each band, rows summing to 1.

    Band ``k`` is a Gaussian of sigma ``width`` (fraction of the height) centred at ``(k + 0.5) / bands``;
    the weights depend only on a row's relative height, so they are the same at every resolution.
    """
    if bands < 1 or not width > 0:
        raise ValueError(f"bands must be >= 1 and width > 0, got {bands} and {width}")
    y = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    centres = (torch.arange(bands, dtype=torch.float64) + 0.5) / bands
    weights = torch.exp(-0.5 * ((y[:, None] - centres[None]) / width) ** 2)
    return weights / weights.sum(1, keepdim=True)


def banded_color_statistics(image: torch.Tensor, bands: int = BANDS,
                            width: float = BAND_WIDTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Per band, the weighted RGB mean (K, 3) and covariance (K, 3, 3) (float64, CPU) of a (3, H, W) or
    (1, 3, H, W) image: each row's pixels count with the row's ``band_weights``.

    Rows are reduced one band of rows at a time (no full-size float64 copy).
    """
    pixels = image.reshape(3, image.shape[-2], image.shape[-1])
    h, w = pixels.shape[-2:]
    if h * w < 2:
        raise ValueError("colour statistics need at least 2 pixels")
    shift = pixels[:, 0, 0].detach().to("cpu", torch.float64)  # shifted sums: no cancellation
    row_sum = torch.empty(h, 3, dtype=torch.float64)
    row_outer = torch.empty(h, 3, 3, dtype=torch.float64)
    rows = max(1, _STATS_CHUNK // w)
    for top in range(0, h, rows):
        chunk = pixels[:, top:top + rows].detach().to("cpu", torch.float64) - shift[:, None, None]
        row_sum[top:top + rows] = chunk.sum(-1).T
        row_outer[top:top + rows] = torch.einsum("ihw,jhw->hij", chunk, chunk)
    weights = band_weights(h, bands, width)                     # (H, K)
    mass = weights.sum(0) * w                                    # (K,) pixels per band
    mean = weights.T @ row_sum / mass[:, None]                   # (K, 3), shifted
    outer = torch.einsum("hk,hij->kij", weights, row_outer) / mass[:, None, None]
    cov = (outer - mean[:, :, None] * mean[:, None, :]) * (mass / (mass - 1).clamp_min(1))[:, None, None]
    return mean + shift, cov


def match_color_banded(image: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor], strength: float = 1.0,
                       bands: int | None = None, width: float = BAND_WIDTH, inplace: bool = False,
                       max_gain: float | None = None) -> torch.Tensor:
    """The graduated colour transfer: give each horizontal band of ``image`` the colour statistics of
    the same band of a style, ``target`` = (means (K, 3), covariances (K, 3, 3)) from
    ``banded_color_statistics`` of the style image (same ``bands`` and ``width``).

    Each band's affine map (``color_transfer_map``) is blended per row with the rows' band weights, so
    the map changes smoothly down the image and is affine in colour at every row (edges and textures
    are kept). ``image`` is one (3, H, W) or (1, 3, H, W) RGB image in [0, 1]; returns the same shape
    and dtype, clamped to [0, 1]. With one band it is ``match_color``. ``max_gain``: see
    ``color_transfer_map`` (a band of little colour under a style band of much is where stretching shows).
    """
    means, covs = target
    k = means.shape[0] if bands is None else bands
    if means.shape != (k, 3) or covs.shape != (k, 3, 3):
        raise ValueError(f"expected band statistics of shapes ({k}, 3) and ({k}, 3, 3), "
                         f"got {tuple(means.shape)} and {tuple(covs.shape)}")
    source = banded_color_statistics(image, k, width)
    maps = [color_transfer_map((source[0][i], source[1][i]), (means[i], covs[i]), strength, max_gain)
            for i in range(k)]
    a = torch.stack([m[0] for m in maps])  # (K, 3, 3)
    b = torch.stack([m[1] for m in maps])  # (K, 3)
    weights = band_weights(image.shape[-2], k, width)
    return _map_rows(image, torch.einsum("hk,kij->hij", weights, a), torch.einsum("hk,ki->ih", weights, b), inplace)


#: A style whose rows explain at least this share of its colour variance has a layout (sky above, ground
#: below) worth matching band by band: the landscapes among the shipped styles measure 0.43-0.81, the cat
#: close-up 0.17, the paintings 0.09-0.18 (docs/recipes.md, "The graduated colour match").
LAYOUT_SHARE = 0.4


def layout_share(image: torch.Tensor) -> float:
    """How much of a (3, H, W) or (1, 3, H, W) RGB image's CIELAB colour variance its rows explain, in [0, 1]:
    the variance of the rows' mean colours over the variance of all pixels (1 = every row one flat colour)."""
    from kornia.color import rgb_to_lab

    lab = rgb_to_lab(image.reshape(1, 3, *image.shape[-2:]).float().clamp(0, 1))[0].double()
    total = lab.reshape(3, -1).var(1, correction=0).sum()
    rows = lab.mean(-1).var(1, correction=0).sum()
    return float(rows / total) if total > 0 else 0.0


def recommended_color_match(style: torch.Tensor) -> tuple[float, int]:
    """The colour match a photo style should get at inference, ``(strength, bands)``: the graduated match at full
    strength, ``(1.0, BANDS)``, for a style with a layout (``layout_share`` >= ``LAYOUT_SHARE``); none, ``(0.0, 1)``,
    otherwise (the generator's colour branch already gives the global colour change, and a global match after it
    flattened its regional changes)."""
    return (1.0, BANDS) if layout_share(style) >= LAYOUT_SHARE else (0.0, 1)


#: Layout shares of a *photo* over which the graduated match fades in (0 below, full strength above): the
#: landscapes among the evaluation photos measure 0.55-0.83, portraits, a close-up, a door and a forest 0.13-0.23.
PHOTO_LAYOUT_RAMP = (0.25, 0.5)


def layout_weight(photo: torch.Tensor) -> float:
    """How much of the graduated match a photo should get, in [0, 1]: 0 for a photo without a sky-above-ground
    layout of its own (``layout_share`` <= 0.25: a portrait, a close-up), which would otherwise take the style's
    sky colours at its top and ground colours at its bottom; 1 from 0.5 up; linear in between.

    ``photo`` is (3, H, W) or (1, 3, H, W) RGB in [0, 1]; measured on a thumbnail of at most 256 px.
    """
    low, high = PHOTO_LAYOUT_RAMP
    return min(max((layout_share(_thumbnail(photo)) - low) / (high - low), 0.0), 1.0)


def _thumbnail(image: torch.Tensor, size: int = 256) -> torch.Tensor:
    """A (3, H, W) or (1, 3, H, W) image as a (1, 3, h, w) float one of at most ``size`` px on the long side."""
    image = image.reshape(1, 3, *image.shape[-2:])
    step = max(1, max(image.shape[-2:]) // (4 * size))  # a 24 MP photo: every 5th pixel first (a thumbnail needs no more)
    image = image[..., ::step, ::step].float()
    scale = size / max(image.shape[-2:])
    if scale < 1:
        size_hw = (max(1, round(image.shape[-2] * scale)), max(1, round(image.shape[-1] * scale)))
        image = torch.nn.functional.interpolate(image, size=size_hw, mode="area")
    return image


# Horizon alignment: the graduated match pairs the photo's rows with the style's rows at the same height, which
# gives the photo's sea the style's sky wherever the two horizons are at different heights (a seascape with its
# horizon at 30% under a style with it at 60%). Each image's horizon is found on its own (no colour comparison
# between photo and style: a green field and a snowfield share no colour), and the style's rows are re-spaced so
# that its horizon meets the photo's, piecewise linearly above and below (docs/recipes.md, "Horizon alignment").

#: Equal-height strips of the style whose colour moments a checkpoint stores (``strip_color_statistics``): the
#: graduated match's bands (sigma 8% of the height) are re-made from them for any horizon.
STRIPS = 64

#: The horizon is looked for between these heights (a split closer to an edge is a border, not a horizon).
HORIZON_RANGE = (0.1, 0.9)


def find_horizon(image: torch.Tensor) -> float:
    """The height of a (3, H, W) or (1, 3, H, W) RGB image's horizon, as a fraction of its height in ``HORIZON_RANGE``.

    The horizon is where the image splits best into a top and a bottom part: the row that minimises the rows'
    spread around the two parts' means, each row described by its mean CIELAB colour (in units of 10) and the log of
    its mean lightness gradient (texture: a smooth sky over textured snow of the same colour splits there too).
    Measured on a thumbnail of at most 256 px.
    """
    from kornia.color import rgb_to_lab
    from kornia.filters import sobel

    lab = rgb_to_lab(_thumbnail(image).clamp(0, 1))[0].double()
    texture = torch.log(sobel(lab[None, :1] / 100)[0, 0].mean(-1) + 1e-3)
    rows = torch.cat([lab.mean(-1).T / 10, texture[:, None]], 1)  # (H, 4)
    h = rows.shape[0]
    if h < 4:
        return 0.5
    # Within-part spread for every split at once from cumulative sums: sum |x|^2 - |sum x|^2 / n per part.
    csum = torch.cat([rows.new_zeros(1, 4), rows.cumsum(0)])
    csq = torch.cat([rows.new_zeros(1), (rows ** 2).sum(1).cumsum(0)])
    n = torch.arange(h + 1, dtype=torch.float64)
    top = csq - (csum ** 2).sum(1) / n.clamp_min(1)
    bottom = (csq[-1] - csq) - ((csum[-1] - csum) ** 2).sum(1) / (h - n).clamp_min(1)
    low, high = HORIZON_RANGE
    splits = torch.arange(max(1, int(low * h)), max(2, min(h - 1, int(high * h))) + 1)
    best = splits[torch.argmin((top + bottom)[splits])]
    return float(best) / h


#: The horizon alignment stretches or squeezes the style's part above and below its horizon by at most this factor: a
#: horizon found in the wrong place (a ship's waterline near the bottom of a photo, a van's roof near the top of a
#: style) would otherwise give most of the photo one sliver of the style (white sails under `faded`). The five
#: segmented pairs need up to 1.9 (a seascape with its horizon at 30% under a style with it at 58%).
MAX_HORIZON_STRETCH = 2.0


def move_horizon(style: float, photo: float, weight: float = 1.0) -> float:
    """Where the style's horizon goes (a height fraction) for a photo whose horizon is at ``photo``: ``weight`` of
    the way there (in [0, 1]; the photo's ``layout_weight``: a photo of unclear layout moves it less), then
    limited so that neither the style's part above nor the part below changes height by more than
    ``MAX_HORIZON_STRETCH`` times."""
    target = style + weight * (photo - style)
    low = max(style / MAX_HORIZON_STRETCH, 1 - (1 - style) * MAX_HORIZON_STRETCH)
    high = min(style * MAX_HORIZON_STRETCH, 1 - (1 - style) / MAX_HORIZON_STRETCH)
    return min(max(target, low), high)


def strip_color_statistics(image: torch.Tensor, strips: int = STRIPS) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB mean (S, 3) and covariance (S, 3, 3) (float64, CPU) of ``strips`` equal-height horizontal strips of a
    (3, H, W) or (1, 3, H, W) image (H >= ``strips``), top to bottom."""
    pixels = image.reshape(3, image.shape[-2], image.shape[-1])
    h = pixels.shape[-2]
    if h < strips or pixels.shape[-1] * (h // strips) < 2:
        raise ValueError(f"{strips} strips need an image at least {strips} rows high, got {h}")
    edges = [round(i * h / strips) for i in range(strips + 1)]
    stats = [color_statistics(pixels[:, a:b]) for a, b in zip(edges[:-1], edges[1:])]
    return torch.stack([m for m, _ in stats]), torch.stack([c for _, c in stats])


def style_strips(style: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], float]:
    """What the aligned graduated match needs of a style image ((3, H, W) or (1, 3, H, W) RGB in [0, 1]): its
    ``strip_color_statistics`` (``STRIPS`` strips, one per row when it has fewer rows) and its ``find_horizon``."""
    return strip_color_statistics(style, min(STRIPS, style.shape[-2])), find_horizon(style)


def horizon_positions(count: int, source: float, target: float) -> torch.Tensor:
    """(count,) float64: where the centres of ``count`` equal strips of an image whose horizon is at ``source``
    land when that image is re-spaced, piecewise linearly, so that its horizon is at ``target`` (heights as
    fractions; ``source == target``: unchanged)."""
    if not (0 < source < 1 and 0 < target < 1):
        raise ValueError(f"horizons must lie inside the image (0 < height < 1), got {source} and {target}")
    u = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    return torch.where(u < source, u / source * target, target + (u - source) / (1 - source) * (1 - target))


def bands_from_strips(strips: tuple[torch.Tensor, torch.Tensor], bands: int = BANDS, width: float = BAND_WIDTH,
                      horizons: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The graduated match's target, band means (K, 3) and covariances (K, 3, 3), from a style's
    ``strip_color_statistics``: each band the mixture of the strips, weighted by the band's Gaussian at the
    strip's height. ``horizons`` = (the style's, the photo's): the strips are placed where the style's rows
    land when its horizon is moved onto the photo's (``horizon_positions``), so the photo's band just below
    its horizon takes the style's rows just below the style's; None = at their own heights (then it equals
    ``banded_color_statistics`` of the style up to the strips' resolution)."""
    means, covs = (t.double() for t in strips)
    count = means.shape[0]
    y = ((torch.arange(count, dtype=torch.float64) + 0.5) / count if horizons is None
         else horizon_positions(count, *horizons))
    centres = (torch.arange(bands, dtype=torch.float64) + 0.5) / bands
    weights = torch.exp(-0.5 * ((y[:, None] - centres[None]) / width) ** 2)   # (S, K)
    weights = weights / weights.sum(1, keepdim=True)                           # each strip shared out as a row is
    weights = weights / weights.sum(0, keepdim=True).clamp_min(1e-12)          # each band a mixture of strips
    mean = weights.T @ means                                                   # (K, 3)
    second = torch.einsum("sk,sij->kij", weights, covs + means[:, :, None] * means[:, None, :])
    return mean, second - mean[:, :, None] * mean[:, None, :]


def aligned_band_statistics(strips: tuple[torch.Tensor, torch.Tensor], style_horizon: float, photo: torch.Tensor,
                            bands: int = BANDS, width: float = BAND_WIDTH,
                            weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The graduated match's target for one photo ((3, H, W) or (1, 3, H, W) RGB in [0, 1]): the style's bands
    (``bands_from_strips`` of its ``strip_color_statistics``) with its horizon at ``style_horizon`` moved onto the
    photo's (``find_horizon``), ``weight`` of the way and within ``MAX_HORIZON_STRETCH`` (``move_horizon``)."""
    moved = move_horizon(style_horizon, find_horizon(photo), weight)
    return bands_from_strips(strips, bands, width, (style_horizon, moved))
