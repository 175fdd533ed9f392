"""Train a model on raw sections and write it as a bundle (``gr2st train``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from anndata import AnnData

from gr2st._constants import (
    DEFAULT_CHECKPOINT_SECONDS,
    DEFAULT_ENCODER,
    DEFAULT_NUCLEI,
    DEFAULT_PANEL,
    DEFAULT_PATCH_PX,
    DEFAULT_STAIN,
    feature_key,
)
from gr2st.encoders import Encoder, get_encoder, prepare_image_inputs
from gr2st.encoders.options import StainOption, resolve_stain
from gr2st.errors import GR2STConfigError
from gr2st.genes import (
    SECTION_ALIGNMENTS,
    align_sections,
    common_genes,
    get_panel,
    prepare_sections,
)
from gr2st.models import GR2ST
from gr2st.predict.bundle import BUNDLE_METHODS, BundleSettings, save_bundle


def train_bundle(
    sections: Sequence[AnnData],
    out: str | Path,
    *,
    panel: str | Path | Sequence[str] = DEFAULT_PANEL,
    method: str = "gr2st",
    profile: str = "default",
    overrides: Sequence[str] = (),
    align: str = "none",
    encoder: Encoder | str = DEFAULT_ENCODER,
    nuclei: str = DEFAULT_NUCLEI,
    stain: StainOption = DEFAULT_STAIN,
    size_px: int = DEFAULT_PATCH_PX,
    seed: int = 0,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    command: Sequence[str] | None = None,
    report: Callable[[str], None] | None = None,
    checkpoint_every: float = DEFAULT_CHECKPOINT_SECONDS,
) -> Path:
    """Compute image inputs, train a model on ``sections`` and write a bundle to ``out``.

    Parameters
    ----------
    sections
        Raw sections from :mod:`gr2st.io` (counts in ``X``, an image each).
    out
        Bundle folder to write (replaced atomically when it exists).
    panel
        Built-in panel name, gene-list file or list of genes: the model's genes and the
        library genes of every normalisation.
    method
        Only ``"gr2st"`` is supported.
    profile, overrides, seed, device
        As in :class:`~gr2st.models.GR2ST` (profile ``default`` or ``paper``).
    align
        Per-section alignment of the training expression before the fit and in the
        bank (:func:`gr2st.genes.align_sections`): ``"none"``, ``"center"`` or
        ``"standardize"``.
    encoder, nuclei, stain, size_px, cache_dir, batch_size
        As in :func:`~gr2st.encoders.prepare_image_inputs`.
    progress
        Show progress bars.
    checkpoint_every
        Seconds between training checkpoints, kept in ``.<out name>.train`` beside
        ``out`` until the bundle is written: an interrupted run (Ctrl-C, a crash) started
        again with the same inputs resumes where it stopped.
    command
        Command line recorded in the bundle.
    report
        Called with one line per stage step ("features: 3/6 sections", "training: epoch
        20/100", …), e.g. ``print`` when progress bars are off.

    Returns
    -------
    pathlib.Path
        The bundle folder.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from gr2st.datasets import synthetic
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> secs = synthetic(n_sections=2, n_genes=8, grid=(3, 3), image_dir=tmp)
    >>> path = train_bundle(secs, tmp / "demo", panel=["GENE000", "GENE001"], nuclei="none",
    ...                     size_px=48, device="cpu", progress=False,
    ...                     overrides=["train.epochs=1", "model.proj_dim=8"])
    >>> sorted(p.name for p in path.iterdir())
    ['bank.safetensors', 'bundle.json', 'weights.safetensors']
    """
    if method not in BUNDLE_METHODS:
        raise GR2STConfigError(
            f"method {method!r}: bundles support {', '.join(BUNDLE_METHODS)} only"
        )
    if not sections:
        raise GR2STConfigError("train: expected at least one section")
    if align not in SECTION_ALIGNMENTS:
        raise GR2STConfigError(f"align {align!r}: expected one of {', '.join(SECTION_ALIGNMENTS)}")
    enc = encoder if isinstance(encoder, Encoder) else get_encoder(encoder, device=device)
    normalizer = resolve_stain(stain)
    say = report or (lambda line: None)
    done = iter(range(1, len(sections) + 1))
    prepare_image_inputs(
        sections,
        encoder=enc,
        nuclei=nuclei,
        size_px=size_px,
        stain=normalizer,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
        on_section=lambda r: say(f"features: {next(done)}/{len(sections)} sections ({r.section})"),
    )
    genes = get_panel(panel) if isinstance(panel, str | Path) else list(panel)
    say(f"normalising: {len(sections)} sections")
    train = align_sections(prepare_sections(sections, genes=genes, progress=progress), how=align)
    # Same library genes, same dropped spots: they were reported just above.
    everything = align_sections(
        prepare_sections(
            sections,
            genes=common_genes(sections),
            library_genes=genes,
            progress=progress,
            log_dropped=False,
        ),
        how=align,
    )
    model = GR2ST(
        train,
        feature_key=feature_key(enc.name),
        profile=profile,
        overrides=overrides,
        seed=seed,
        device=device,
    )
    if model.config.train.ensemble > 1:
        raise GR2STConfigError(
            "train.ensemble: a bundle holds one model; ensembles are averaged by "
            "`gr2st benchmark` only"
        )
    epochs = model.config.train.epochs

    def epoch_line(epoch: int, loss: float) -> None:
        # About ten lines per run: enough to see it move, few enough to read.
        if epoch % max(1, epochs // 10) == 0 or epoch == epochs:
            say(f"training: epoch {epoch}/{epochs} (loss {loss:.4f})")

    work = Path(out).parent / f".{Path(out).name}.train"
    model.train(
        progress=progress,
        on_epoch_end=epoch_line,
        checkpoint_dir=work,
        checkpoint_every=checkpoint_every,
    )
    say("writing the bundle")
    settings = BundleSettings(encoder=enc, size_px=size_px, stain=normalizer, nuclei=nuclei)
    folder = save_bundle(
        model, out, sections=train, all_genes=everything, settings=settings, command=command
    )
    shutil.rmtree(work, ignore_errors=True)
    return folder
