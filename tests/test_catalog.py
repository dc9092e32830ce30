"""One catalog of names (hpcdiff/config/catalog.py): the registries register against it and
fail at import when they disagree; no other module keeps a list of the same names; the
better direction of each metric's series is a fact of the metric."""

from __future__ import annotations

import ast
import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from hpcdiff.config import catalog
from hpcdiff.config.registry import Registry, UndeclaredName

PACKAGE = Path(__file__).resolve().parents[1] / "hpcdiff"


def _import_plugin(tmp_path, monkeypatch, name: str, body: str):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        return importlib.import_module(name)
    finally:
        sys.modules.pop(name, None)


def test_registering_an_undeclared_name_fails_at_import(tmp_path, monkeypatch):
    """A module that registers a model, metric, dataset or executor the catalog does not
    declare cannot be imported; the error names the catalog and the nearest declared name."""
    cases = {
        "plugin_model": "from hpcdiff.science.models import MODELS\nMODELS.register('unet2')(object())\n",
        "plugin_metric": "from hpcdiff.evaluation.metrics import METRICS\n"
        "@METRICS.register('fid_clasifier')\ndef f(ctx):\n    return {}\n",
        "plugin_dataset": "from hpcdiff.data import LOADERS\n@LOADERS.register('cifar10')\ndef f(spec):\n    pass\n",
        "plugin_executor": "from hpcdiff.launch import BACKENDS\nBACKENDS.register('pbs')(object)\n",
    }
    for name, body in cases.items():
        with pytest.raises(UndeclaredName, match="catalog.py") as err:
            _import_plugin(tmp_path, monkeypatch, name, body)
        if name == "plugin_metric":
            assert "did you mean 'fid_classifier'" in str(err.value)
    # Control: a declared name registers (into a fresh registry, not the package's own).
    fresh = Registry("model", declared=catalog.MODELS)
    fresh.register("unet")(object())
    assert "unet" in fresh


def test_a_declared_name_nothing_registers_fails_when_sealed():
    reg = Registry("model", declared=("cnn", "unet", "transformer"))
    reg.register("cnn")(object())
    reg.register("unet")(object())
    with pytest.raises(UndeclaredName, match="'transformer'"):
        reg.seal()
    reg.register("transformer")(object())
    assert reg.seal() is reg
    open_registry = Registry("degradation")  # degradations, schedules, samplers: open
    open_registry.register("anything")(object())
    open_registry.seal()


def test_the_package_registries_hold_exactly_the_catalog():
    from hpcdiff.config.spec import DATASETS, EvalSpec
    from hpcdiff.data import LOADERS
    from hpcdiff.evaluation.metrics import DEFAULT_METRICS, METRICS
    from hpcdiff.launch import BACKENDS, CHOICES
    from hpcdiff.science.models import MODELS

    assert MODELS.names() == sorted(catalog.MODELS)
    assert METRICS.names() == sorted(catalog.METRICS)
    assert LOADERS.names() == sorted(catalog.DATASETS) and DATASETS == tuple(catalog.DATASETS)
    assert BACKENDS.names() == sorted(catalog.BACKENDS) and CHOICES == ("auto", *catalog.BACKENDS)
    assert EvalSpec().metrics == DEFAULT_METRICS == catalog.DEFAULT_METRICS


def _string_collections(tree: ast.AST):
    """Every literal tuple/list/set of strings and every dict literal's string keys."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
        else:
            continue
        strings = {e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        if len(strings) >= 2:
            yield node.lineno, strings


def test_no_module_keeps_a_second_list_of_catalog_names():
    """A literal collection holding two or more names of one catalog list, anywhere in the
    package but the catalog, is a second owner of that list."""
    lists = {
        "models": set(catalog.MODELS),
        "datasets": set(catalog.DATASETS),
        "executors": set(catalog.EXECUTORS),
        "templates": set(catalog.SBATCH_TEMPLATES),
        "metrics": set(catalog.METRICS),
    }
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "catalog.py":
            continue
        for line, strings in _string_collections(ast.parse(path.read_text(), str(path))):
            for what, names in lists.items():
                if len(strings & names) >= 2:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what} {sorted(strings & names)}")
    assert not found, "name lists kept outside hpcdiff/config/catalog.py:\n" + "\n".join(found)
    # Control: the scan sees such a list.
    planted = ast.parse('KNOWN = {"mnist": 1, "fashion-mnist": 2}\nEXEC = ["auto", "local"]')
    assert [s for _, s in _string_collections(planted)] == [{"mnist", "fashion-mnist"}, {"auto", "local"}]


def test_better_direction_is_a_fact_of_each_series():
    d = catalog.better_direction
    assert d("fid_classifier") == d("kid_classifier") == d("fid_inception") == d("tsne_kl") == "min"
    assert d("inception_score") == d("class_entropy") == d("ssim") == d("recon_full_ssim") == "max"
    assert d("recon_direct_mse") == d("val_loss") == d("train_loss") == "min"
    for spread_or_share in (
        "inception_score_std",
        "kid_classifier_std",
        "class_7",
        "recon_full_ssim_class_3",
        "diversity_trace",
        "lr",
        "epoch_seconds",
        "a_metric_from_the_future",
    ):
        assert d(spread_or_share) == "final", spread_or_share
    assert catalog.series_facts("class_12").metric == "class_histogram"
    assert catalog.depends_on_classifier("class_3") and catalog.depends_on_classifier("inception_score_std")
    assert not catalog.depends_on_classifier("ssim") and not catalog.depends_on_classifier("recon_full_mse")
    assert catalog.family_datasets("mnist") == ["mnist", "mnist-5k"]


def test_a_typo_in_eval_metrics_is_caught_by_config_alone(tmp_path):
    """The metric names are checked where the spec is validated (stdlib, no torch)."""
    from hpcdiff.config.spec import RunSpec, SpecError

    with pytest.raises(SpecError, match=r"eval\.metrics\[1\].*did you mean 'inception_score'"):
        RunSpec.from_dict({"eval": {"metrics": ["fid_classifier", "inception_scor"]}})
