"""The public surface: each package's __all__ names what users may touch, and nothing the
probes need is part of it. Probes reach the pipeline through restore/_probing.py, a seam the
harness owns, not through load()'s or prefetch()'s arguments."""

from __future__ import annotations

import inspect
import typing
from types import SimpleNamespace

import pytest

import foundry_trace
from foundry_trace import archive, parallel, restore, save
from foundry_trace.restore._pipeline import Pipeline
from foundry_trace.restore._probing import PipelineHooks, current, probing

PACKAGES = (foundry_trace, archive, parallel, restore, save)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_public_name_resolves_and_none_is_a_probe_s(package: object) -> None:
    assert len(set(package.__all__)) == len(package.__all__)
    for name in package.__all__:
        assert hasattr(package, name), f"{package.__name__}.__all__ names {name}, which it does not define"
    assert not {"PipelineHooks", "probing", "Pipeline", "Archive.fileno"} & set(package.__all__)


def test_load_and_prefetch_take_no_probe_arguments() -> None:
    for function in (foundry_trace.load, foundry_trace.prefetch):
        assert not {"hooks", "native_chunks"} & set(inspect.signature(function).parameters)


def test_what_restored_hands_back_is_exported_and_signing_is_reachable_from_the_top() -> None:
    spans = typing.get_type_hints(foundry_trace.Restored.spans.fget, vars(foundry_trace))["return"]
    assert typing.get_args(spans) == (foundry_trace.Span,) and "Span" in foundry_trace.__all__
    assert {"generate_key", "sign_archive", "verify_signatures"} <= set(foundry_trace.__all__)


def test_the_probes_seam_sets_the_pipelines_made_in_its_block_only() -> None:
    """A pipeline reads the seam when it is made: hooks with the native runner are refused, so
    the refusal shows the seam reached it; outside the block the defaults hold."""
    manifest = SimpleNamespace(functions=[], modules=[], graphs=[])

    def make() -> Pipeline:
        return Pipeline(SimpleNamespace(manifest=manifest), SimpleNamespace(events=[]), threads=1, builders=1, chunk_nodes=0, context=0, started=0.0)

    with probing(hooks=PipelineHooks()), pytest.raises(ValueError, match="native_chunks=False"):
        make()
    with probing(hooks=PipelineHooks(), native_chunks=False):
        assert current().native_chunks is False
        pipeline = make()
        assert pipeline._native_chunks is False
        pipeline.close()
    assert current().hooks is None and current().native_chunks is True
