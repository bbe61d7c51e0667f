"""The exporter's self-metrics are the catalogue's: same names, types, help and labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.metrics import MetricWrapperBase

from credit_exporter import catalog
from credit_exporter.health import Health

# how prometheus_client names a family whose catalogue name carries the type's suffix
FAMILY_SUFFIX = {catalog.MetricType.COUNTER: "_total", catalog.MetricType.INFO: "_info"}


def _exposed() -> dict[str, tuple[Metric, tuple[str, ...]]]:
    """Each self-metric Health registers, by catalogue name: its family and label names."""
    health = Health(CollectorRegistry(auto_describe=False))
    wrappers = [v for v in vars(health).values() if isinstance(v, MetricWrapperBase)]
    exposed = {}
    for wrapper in wrappers:
        (family,) = wrapper.describe()
        name = family.name + FAMILY_SUFFIX.get(catalog.MetricType(family.type), "")
        # label names are not public; an Info's keys are its catalogue labels
        labels = tuple(wrapper._labelnames) if family.type != "info" else ()
        exposed[name] = (family, labels)
    return exposed


def test_health_exposes_every_self_metric_of_the_catalogue_and_no_other() -> None:
    declared = {m.name for m in catalog.METRICS if m.source is catalog.Source.EXPORTER}
    assert set(_exposed()) == declared


def test_each_self_metric_has_the_catalogue_type_help_and_labels() -> None:
    for name, (family, labels) in _exposed().items():
        entry = catalog.get(name)
        assert family.type == entry.type.value, name
        assert family.documentation == entry.help, name
        if entry.type is catalog.MetricType.INFO:
            assert labels == (), name
        else:
            assert labels == entry.labels, name


def test_build_info_carries_the_catalogue_keys() -> None:
    registry = CollectorRegistry(auto_describe=False)
    Health(registry)
    (sample,) = [s for f in registry.collect() for s in f.samples if s.name == "credit_build_info"]
    assert tuple(sample.labels) == catalog.get("credit_build_info").labels
