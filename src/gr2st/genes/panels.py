"""Gene panels: the published benchmark panels (package data) or a user's list."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from importlib.resources import files
from pathlib import Path

from anndata import AnnData

from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.io._validate import examples, read_text_file

_DATA = files("gr2st.genes") / "data"


def list_panels() -> list[str]:
    """Names of the built-in panels.

    ``her2st-785`` and ``cscc-171`` are the gene lists of the published HER2ST and
    cSCC benchmarks (HisToGene, Hist2ST, …, GR2ST), in their published order.

    Examples
    --------
    >>> list_panels()
    ['cscc-171', 'her2st-785']
    """
    return sorted(p.name.removesuffix(".txt") for p in _DATA.iterdir() if p.name.endswith(".txt"))


def get_panel(name: str | os.PathLike[str]) -> list[str]:
    """Return a panel's genes in order.

    Parameters
    ----------
    name
        A built-in panel name (see :func:`list_panels`) or the path of a text file
        with one gene per line (blank lines and ``#`` comments are ignored).

    Raises
    ------
    GR2STConfigError
        Unknown name that is not an existing file.
    GR2STDataError
        A binary or unreadable panel file, an empty one, or duplicated genes.

    Examples
    --------
    >>> genes = get_panel("her2st-785")
    >>> len(genes), genes[:2]
    (785, ['HPS6', 'TNC'])
    """
    builtin = str(name) in list_panels()
    if builtin:
        source = str(name)
        text = (_DATA / f"{name}.txt").read_text(encoding="utf-8")
    else:
        path = Path(name)
        if not path.is_file():
            raise GR2STConfigError(
                f"unknown gene panel {str(name)!r}; expected one of "
                f"{', '.join(list_panels())} or a text file with one gene per line"
            )
        source = str(path)
        text = read_text_file(path, what="gene panel", expected="one gene per line")
    genes = [g for line in text.splitlines() if (g := line.split("#", 1)[0].strip())]
    if not genes:
        raise GR2STDataError(f"{source}: gene panel is empty; expected one gene per line")
    dup = [g for g, n in Counter(genes).items() if n > 1]
    if dup:
        raise GR2STDataError(f"{source}: duplicated gene(s) {examples(dup)}")
    return genes


def check_genes(adata: AnnData, genes: Iterable[str], *, source: str) -> None:
    """Raise unless every gene of ``genes`` is in ``adata.var_names``.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> sec = synthetic(n_sections=1, n_genes=3, grid=(2, 2))[0]
    >>> check_genes(sec, ["GENE000", "MYC"], source="S0")
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STDataError: S0: 1 of 2 genes missing: 'MYC'
    """
    wanted = list(genes)
    present = set(adata.var_names)
    missing = [g for g in wanted if g not in present]
    if missing:
        # Mostly missing: the panel is not of this data (species, gene ids), say so.
        hint = ""
        if len(missing) > len(wanted) / 2:
            hint = (
                f"; the data's genes are {describe_gene_names(adata.var_names)}: choose a "
                "panel of this data with --panel FILE (gr2st panel writes one) or --genes"
            )
        raise GR2STDataError(
            f"{source}: {len(missing)} of {len(wanted)} genes missing: {examples(missing)}{hint}"
        )


def describe_gene_names(names: Iterable[str]) -> str:
    """What kind of gene names a section has, with a species hint, for error messages.

    Examples
    --------
    >>> describe_gene_names(["ENSMUSG00000029580", "ENSMUSG00000057666"])
    "Ensembl ids of mouse (e.g. 'ENSMUSG00000029580', 'ENSMUSG00000057666')"
    >>> describe_gene_names(["Actb", "Gapdh", "Ptprc"])
    "symbols in mouse/rat style (e.g. 'Actb', 'Gapdh', 'Ptprc')"
    """
    names = [str(n) for n in names]
    shown = examples(names, n=3)
    ensembl = [n for n in names if n.startswith("ENS") and n[3:4].isalpha()]
    if len(ensembl) > len(names) / 2:
        prefixes = {"ENSG": "human", "ENSMUSG": "mouse", "ENSRNOG": "rat", "ENSDARG": "zebrafish"}
        species = sorted({s for p, s in prefixes.items() for n in ensembl if n.startswith(p)})
        return f"Ensembl ids of {' and '.join(species) or 'some species'} (e.g. {shown})"
    capitalised = sum(n[:1].isupper() and n[1:] == n[1:].lower() and len(n) > 1 for n in names)
    if capitalised > len(names) / 2:
        return f"symbols in mouse/rat style (e.g. {shown})"
    return f"e.g. {shown}"


def common_genes(sections: Sequence[AnnData]) -> list[str]:
    """Genes measured in every section, in the first section's order.

    This is the gene list for predicting "all genes" across sections.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> a, b = synthetic(n_sections=2, n_genes=4, grid=(2, 2))
    >>> common_genes([a, b[:, ["GENE003", "GENE001"]]])
    ['GENE001', 'GENE003']
    """
    if not sections:
        raise GR2STConfigError("common_genes needs at least one section")
    shared = set(sections[0].var_names)
    for adata in sections[1:]:
        shared &= set(adata.var_names)
    return [g for g in sections[0].var_names if g in shared]
