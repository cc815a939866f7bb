"""The zoo: one registry of names, seeded init, checkpoint formats, the built-in default model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.model.zoo import build_model, known_models, load_model, model_entry, state_sha256
from pipeline.sources import ModelSpec
from resnetx.errors import BadInput


def test_one_registry_resolves_every_name() -> None:
    """Listed names, CIFAR depths that are not listed, and the built-in model all resolve through model_entry."""
    assert known_models()[0] == "default" and "resnet50" in known_models() and "preact_resnet164" in known_models()
    assert model_entry("resnet8").family == "cifar" and model_entry("resnet8").weights is None
    assert model_entry("default").weights is not None and model_entry("resnet50").family == "imagenet"


def test_state_hash_does_not_depend_on_the_file_format(tmp_path: Path) -> None:
    m = build_model("resnet20", num_classes=10, in_chans=1)
    torch.save(m.state_dict(), tmp_path / "plain.pth")
    torch.save({"model_state_dict": m.state_dict(), "epoch": 9}, tmp_path / "wrapped.pth")
    a, _ = load_model(ModelSpec("resnet20", weights=tmp_path / "plain.pth", image_size=28))
    b, _ = load_model(ModelSpec("resnet20", weights=tmp_path / "wrapped.pth", image_size=28))
    assert state_sha256(a) == state_sha256(b) == state_sha256(m)


def test_unknown_model_lists_known() -> None:
    with pytest.raises(BadInput, match="unknown model 'vgg16'; known: default, resnet18"):
        load_model(ModelSpec("vgg16"))
    assert "wide_resnet50_2" in known_models()


def test_random_init_is_seeded() -> None:
    a, _ = load_model(ModelSpec("resnet20"))
    b, _ = load_model(ModelSpec("resnet20"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def _ref() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    m = build_model("resnet18", num_classes=10, in_chans=3).eval()
    for mod in m.modules():  # non-trivial BN statistics so a wrong load would show
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return m, x, m(x)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "model_state_dict", "module_prefix", "torchscript"])
def test_checkpoint_formats_load_strictly(tmp_path: Path, wrap: str) -> None:
    m, x, y = _ref()
    sd = m.state_dict()
    path = tmp_path / "ckpt.pth"
    if wrap == "plain":
        torch.save(sd, path)
    elif wrap == "module_prefix":
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    elif wrap == "torchscript":
        torch.jit.save(torch.jit.trace(m, x), str(path))
    else:
        torch.save({wrap: sd, "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    loaded, info = load_model(ModelSpec("resnet18", weights=path, image_size=64))
    assert info.num_classes == 10  # inferred from fc.weight
    with torch.no_grad():
        got = loaded(x)
    assert float((got - y).norm() / y.norm()) <= 1e-5
    assert info.weights_sha256 and info.trained


def test_key_mismatch_names_keys(tmp_path: Path) -> None:
    m, _, _ = _ref()
    sd = m.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["layer1.0.conv1.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(BadInput, match=r"1 missing key\(s\) \[layer1.0.conv1.weight\].*"
                                       r"1 unexpected key\(s\) \[extra.weight\]"):
        load_model(ModelSpec("resnet18", weights=tmp_path / "bad.pth"))


def test_checkpoint_for_other_arch(tmp_path: Path) -> None:
    torch.save(build_model("resnet20", num_classes=10, in_chans=3).state_dict(), tmp_path / "r20.pth")
    with pytest.raises(BadInput, match="does not fit this model"):
        load_model(ModelSpec("resnet18", weights=tmp_path / "r20.pth"))


def test_class_count_mismatch(tmp_path: Path) -> None:
    torch.save(build_model("resnet20", num_classes=10, in_chans=3).state_dict(), tmp_path / "r20.pth")
    with pytest.raises(BadInput, match="other shapes.*fc.weight"):
        load_model(ModelSpec("resnet20", weights=tmp_path / "r20.pth", num_classes=100))


def test_malicious_pickle_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # unpickling would run a shell command that creates the marker
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(BadInput, match="could run code; refused"):
        load_model(ModelSpec("resnet20", weights=path))
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(BadInput, match="bad.pth"):
        load_model(ModelSpec("resnet20", weights=path))


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        load_model(ModelSpec("resnet20", weights=tmp_path / "nope.pth"))


def test_default_model_is_trained_fashion_resnet20() -> None:
    m, info = load_model(ModelSpec("default"))
    assert info.arch == "resnet20" and info.in_chans == 1 and info.image_size == 28 and info.num_classes == 10
    assert info.trained and info.class_names and info.class_names[0] == "T-shirt/top"
    with pytest.raises(BadInput, match="--model default takes no"):
        load_model(ModelSpec("default", num_classes=3))


def test_checkpoint_made_for_another_arch_says_which(tmp_path: Path) -> None:
    from pipeline.model.zoo import DEFAULT_WEIGHTS

    with pytest.raises(BadInput, match="was saved for resnet20, not resnet56; use --model resnet20"):
        load_model(ModelSpec("resnet56", weights=DEFAULT_WEIGHTS))


def test_a_plain_state_dict_gets_the_family_defaults_and_export_says_so(tmp_path: Path) -> None:
    """The default model saved as a plain state_dict: nothing records its Fashion-MNIST statistics."""
    from pipeline.make.export import ExportOptions, export
    from pipeline.model.zoo import DEFAULT_WEIGHTS
    from pipeline.precisions import Precision

    state, _ = __import__("pipeline.model.zoo", fromlist=["load_state_dict"]).load_state_dict(DEFAULT_WEIGHTS)
    torch.save(state, tmp_path / "plain.pth")
    _, info = load_model(ModelSpec("resnet20", weights=tmp_path / "plain.pth", image_size=28))
    assert info.preprocess_source == "defaults" and info.preprocess.mean == (sum((0.4914, 0.4822, 0.4465)) / 3,)
    r = export(ExportOptions(model=ModelSpec("resnet20", weights=tmp_path / "plain.pth", image_size=28),
                             out=tmp_path / "f", precisions=(Precision.fp32, Precision.int8), calib_samples=64,
                             reference_samples=0, exporter="legacy"))
    assert any("records no preprocessing: resnetx assumed the cifar defaults" in n and "--mean" in n
               for n in r.notices), r.notices


def test_preprocessing_and_class_names_declared_on_the_command_line(tmp_path: Path) -> None:
    from pipeline.model.zoo import DEFAULT_WEIGHTS

    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    spec = ModelSpec("resnet20", weights=DEFAULT_WEIGHTS, mean=(0.5,), std=(0.25,), resize=32, class_names=names)
    _, info = load_model(spec)  # the checkpoint records its own: the command line wins
    p = info.preprocess
    assert (p.mean, p.std, p.resize, p.image_size) == ((0.5,), (0.25,), 32, 28) and info.preprocess_source == "options"
    assert info.class_names == tuple(f"c{i}" for i in range(10))
    assert ModelSpec.from_dict(spec.to_dict()) == ModelSpec("resnet20", weights=DEFAULT_WEIGHTS.resolve(), mean=(0.5,),
                                                            std=(0.25,), resize=32, class_names=names.resolve())
    names.write_text("a\nb\n")
    with pytest.raises(BadInput, match="has 2 names; the model has 10 classes"):
        load_model(spec)
    with pytest.raises(BadInput, match="--mean takes 1 or 3 values"):
        load_model(ModelSpec("resnet20", mean=(0.1, 0.2)))
    with pytest.raises(BadInput, match="--resize 16 is smaller than the crop"):
        load_model(ModelSpec("resnet20", resize=16))
    with pytest.raises(BadInput, match="--model default takes no"):
        load_model(ModelSpec("default", mean=(0.5,)))


def test_a_model_scoring_near_chance_is_flagged(tmp_path: Path) -> None:
    """Wrong statistics (mean 5 on images in [0, 1]): verify says the preprocessing likely differs from training."""
    from pipeline.check.verify import VerifyOptions, verify
    from pipeline.make.export import ExportOptions, export
    from pipeline.model.data import near_chance_note
    from pipeline.model.zoo import DEFAULT_WEIGHTS

    assert near_chance_note(12.0, 10, "x") and near_chance_note(60.0, 10, "x") is None
    spec = ModelSpec("resnet20", weights=DEFAULT_WEIGHTS, mean=(5.0,), std=(0.05,))
    export(ExportOptions(model=spec, out=tmp_path / "f", reference_samples=0, exporter="legacy"))
    r = verify(VerifyOptions(folder=tmp_path / "f", samples=200))
    assert any("near chance" in n and "--mean/--std" in n for n in r.notes), r.notes


def test_truncated_checkpoint_reads_as_corrupt_not_as_refused(tmp_path: Path) -> None:
    """A damaged file is told apart from a refused one by its structure, not by the words of torch's error."""
    whole = tmp_path / "whole.pth"
    torch.save(build_model("resnet20", num_classes=10, in_chans=1).state_dict(), whole)
    for legacy in (False, True):
        if legacy:
            torch.save(torch.load(whole), whole, _use_new_zipfile_serialization=False)
        cut = tmp_path / f"cut{int(legacy)}.pth"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
        with pytest.raises(BadInput, match="cannot be read: truncated, corrupt") as e:
            load_model(ModelSpec("resnet20", weights=cut, in_chans=1, num_classes=10))
        assert "could run code" not in str(e.value)
