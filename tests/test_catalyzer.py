"""Catalyzer module, catalyze(), and the model file round-trip through the store."""
import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import safetensors.torch
import torch

from spreadcode import store
from spreadcode.catalyzer import (Catalyzer, CatalyzerMeta, catalyze, catalyzer_bytes,
                                  load_catalyzer, save_catalyzer)
from spreadcode.errors import SpreadcodeError
from spreadcode.quantizer import ProductQuantizer, QuantizerSpec
from spreadcode.residual import ResidualCatalyzer
from spreadcode.sample import load_sample

# The metadata fields of the test models' files, and the same as a CatalyzerMeta (`meta_for`).
META = {"quantizer": {"kind": "lattice", "d": 8, "param": 10}, "lambda": 0.02,
        "training": {"seed": 0, "epochs": 1}}


def meta_for(model, quantizer=QuantizerSpec("lattice", 8, 10), lam=0.02):
    """META for ``model`` as a CatalyzerMeta."""
    return CatalyzerMeta.for_model(model, quantizer, lam, META["training"])


def small_model(seed=0, d_in=96, d_out=8, hidden=32, fit_on=None):
    """A catalyzer with seeded random weights, preprocessing fitted on ``fit_on`` (sample learn)."""
    torch.manual_seed(seed)
    model = Catalyzer(d_in, d_out, hidden)
    data = load_sample().learn[:500] if fit_on is None else fit_on
    model.fit_preprocessing(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)))
    # Non-trivial BatchNorm running statistics, as after training.
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.ascontiguousarray(data[:200], dtype=np.float32)))
    return model.eval()


def test_outputs_are_unit_vectors_of_d_out():
    out = catalyze(small_model(), load_sample().base[:300])
    assert out.shape == (300, 8) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


def test_preprocessing_makes_offset_and_scale_irrelevant():
    x = load_sample().learn[:400]
    a = small_model(seed=3, fit_on=x)
    b = small_model(seed=3, fit_on=x * 255.0 + 7.0)
    assert float(b.scale) == pytest.approx(float(a.scale) / 255.0, rel=1e-5)
    np.testing.assert_allclose(catalyze(a, x[:50]), catalyze(b, x[:50] * 255.0 + 7.0), atol=1e-4)


def test_fit_preprocessing_centres_and_scales_to_unit_rms():
    x = torch.from_numpy(load_sample().learn[:1000]) * 40 + 3
    model = Catalyzer(96, 8, 16)
    model.fit_preprocessing(x)
    z = (x - model.center) * model.scale
    assert float(z.mean(dim=0).abs().max()) < 1e-4
    assert float((z ** 2).mean()) == pytest.approx(1.0, rel=1e-4)


def test_identical_training_vectors_rejected():
    with pytest.raises(SpreadcodeError, match="identical"):
        Catalyzer(4, 2, 8).fit_preprocessing(torch.ones(10, 4))


def test_catalyze_is_chunk_independent_and_restores_mode():
    model = small_model().train()
    x = load_sample().base[:100]
    whole = catalyze(model, x)
    assert model.training
    np.testing.assert_allclose(catalyze(model, x, batch=7), whole, atol=1e-6)
    np.testing.assert_allclose(catalyze(model, x.astype(np.float64)), whole, atol=1e-6)


def test_catalyze_wrong_dimension_names_both():
    with pytest.raises(SpreadcodeError, match="dimension 95 but the catalyzer expects d_in=96"):
        catalyze(small_model(), np.zeros((3, 95), np.float32))
    with pytest.raises(SpreadcodeError, match=r"shape \(96,\)"):
        catalyze(small_model(), np.zeros(96, np.float32))


def test_catalyze_rejects_nan_and_non_numbers():
    x = np.array(load_sample().base[:20])
    x[13, 5] = np.nan
    with pytest.raises(SpreadcodeError, match="vector 13 contains NaN"):
        catalyze(small_model(), x, batch=8)
    with pytest.raises(SpreadcodeError, match="real numbers"):
        catalyze(small_model(), np.array([["a"] * 96]))


def test_save_load_round_trip_is_bit_identical(tmp_path):
    model = small_model(seed=1)
    out_path = tmp_path / "exact-name"
    sha, stored = save_catalyzer(model, meta_for(model), path=out_path, store=tmp_path / "store")
    assert stored == tmp_path / "store" / f"{sha}.safetensors"
    assert out_path.read_bytes() == stored.read_bytes()
    assert store.sha256_file(out_path) == sha
    for ref in (sha, sha[:10], str(out_path), "latest"):
        loaded, meta = load_catalyzer(ref, store=tmp_path / "store")
        assert not loaded.training
        assert meta.sha256 == sha and meta.path == str(out_path if ref == str(out_path) else stored)
        assert meta.arch() == {"d_in": 96, "hidden": 32, "d_out": 8}
        assert meta.quantizer.to_json() == META["quantizer"] and meta.training == META["training"]
        assert meta.to_json() == {"artifact": "catalyzer", "format_version": 1,
                                  "arch": meta.arch(), **META}
        x = load_sample().query
        assert np.array_equal(catalyze(loaded, x), catalyze(model, x))
    resaved, _ = save_catalyzer(loaded, meta, store=tmp_path / "store2")
    assert resaved == sha


def test_a_loaded_model_owns_trainable_weights(tmp_path):
    """Loading assigns the file's tensors to the module: each parameter is a trainable
    Parameter on the CPU in memory of its own, so training it further (fine-tuning, a
    decoder trained after the fact) neither fails nor reaches another load of the file."""
    model = small_model(seed=2)
    path = tmp_path / "m.safetensors"
    save_catalyzer(model, meta_for(model), path=path, store=tmp_path / "store")
    loaded, _ = load_catalyzer(str(path))
    params = list(loaded.parameters())
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad and p.device.type == "cpu"
               for p in params)
    assert all(t.device.type == "cpu" for t in loaded.buffers())
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    again, _ = load_catalyzer(str(path))
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), model.parameters()))


def test_metadata_is_one_sorted_json_string(tmp_path):
    data = catalyzer_bytes(small_model(), meta_for(small_model()))
    path = tmp_path / "m"
    path.write_bytes(data)
    header_len = int.from_bytes(data[:8], "little")
    raw = json.loads(data[8:8 + header_len])["__metadata__"]
    assert list(raw) == ["spreadcode"]
    meta = json.loads(raw["spreadcode"])
    assert raw["spreadcode"] == json.dumps(meta, sort_keys=True, separators=(",", ":"))
    assert meta["artifact"] == "catalyzer" and meta["format_version"] == 1
    assert set(safetensors.torch.load(data)) == set(small_model().state_dict())


def test_hash_changes_with_weights_or_metadata():
    meta = meta_for(small_model())
    base = catalyzer_bytes(small_model(seed=0), meta)
    assert catalyzer_bytes(small_model(seed=0), meta) == base
    assert catalyzer_bytes(small_model(seed=1), meta) != base
    assert catalyzer_bytes(small_model(seed=0), meta_for(small_model(), lam=0.01)) != base


def test_metadata_must_describe_the_network(tmp_path):
    with pytest.raises(SpreadcodeError, match="quantizer dimension 24 != catalyzer d_out 8"):
        meta_for(small_model(), QuantizerSpec("lattice", 24, 79))
    with pytest.raises(SpreadcodeError, match="describes arch .* but the network is"):
        save_catalyzer(small_model(hidden=16), meta_for(small_model()), store=tmp_path)


def test_load_rejects_foreign_safetensors(tmp_path):
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(safetensors.torch.save({"weight": torch.zeros(3)}))
    with pytest.raises(SpreadcodeError, match="without spreadcode metadata"):
        load_catalyzer(path)


def test_load_rejects_other_artifact_kinds(tmp_path):
    path = tmp_path / "decoder.safetensors"
    meta = json.dumps({"artifact": "decoder", "format_version": 1, "catalyzer": "0" * 64})
    path.write_bytes(safetensors.torch.save({"w": torch.zeros(2)}, metadata={"spreadcode": meta}))
    with pytest.raises(SpreadcodeError, match="a 'decoder' artifact, not a catalyzer"):
        load_catalyzer(path)


def test_load_rejects_tensors_not_matching_arch(tmp_path):
    tensors = {k: v.contiguous() for k, v in small_model().state_dict().items()}
    meta = {"artifact": "catalyzer", "format_version": 1, "arch": {"d_in": 95, "hidden": 32, "d_out": 8},
            **META}
    path = tmp_path / "lying.safetensors"
    path.write_bytes(safetensors.torch.save(tensors, metadata={"spreadcode": json.dumps(meta)}))
    with pytest.raises(SpreadcodeError, match="tensors do not match arch"):
        load_catalyzer(path)


@pytest.mark.parametrize("field, value, message", [
    ("dtype", "I32", "tensors do not match arch"),
    ("shape", [64], "corrupt model file"),
])
def test_load_rejects_corrupt_tensor_data(tmp_path, field, value, message):
    data = bytearray(catalyzer_bytes(small_model(), meta_for(small_model())))
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    assert header["mlp.1.weight"]["shape"] == [32] and header["mlp.1.weight"]["dtype"] == "F32"
    header["mlp.1.weight"][field] = value  # same length in JSON: the header size is unchanged
    new_header = json.dumps(header, separators=(",", ":")).encode().ljust(header_len)
    assert len(new_header) == header_len
    data[8:8 + header_len] = new_header
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(SpreadcodeError, match=message) as info:
        load_catalyzer(path)
    assert str(path) in str(info.value)


def lying_file(tmp_path, arch, tensors=None, quantizer=None):
    """A catalyzer file whose metadata says ``arch`` (and ``quantizer``) over ``tensors``."""
    tensors = tensors or {k: v.contiguous() for k, v in small_model().state_dict().items()}
    meta = {"artifact": "catalyzer", "format_version": 1, **META, "arch": arch}
    if quantizer is not None:
        meta["quantizer"] = quantizer
    path = tmp_path / "lying.safetensors"
    path.write_bytes(safetensors.torch.save(tensors, metadata={"spreadcode": json.dumps(meta)}))
    return path


@pytest.mark.parametrize("arch, quantizer, message", [
    ({"d_in": 96, "hidden": 10**9, "d_out": 8}, None, r"bad 'arch.hidden': 1000000000 is not"),
    ({"d_in": 96, "hidden": 2**20, "d_out": 8}, None, "tensors do not match arch"),
    ({"d_in": 96, "hidden": True, "d_out": 8}, None, r"bad 'arch.hidden': True"),
    ({"d_in": 96}, None, r"bad 'arch.hidden': None"),
    ("wide", None, r"bad 'arch': not an object"),
    ({"d_in": 96, "hidden": 32, "d_out": 8}, {"kind": "lattice", "d": 8, "param": 10**6},
     r"bad 'quantizer': r2=1000000 is too large"),
    ({"d_in": 96, "hidden": 32, "d_out": 8}, {"kind": "lattice", "d": 24, "param": 79},
     "quantizer dimension 24 != d_out 8"),
    ({"d_in": 96, "hidden": 32, "d_out": 8}, ["lattice", 8, 10], r"bad 'quantizer': not an object"),
])
def test_metadata_is_checked_before_any_network_is_built(tmp_path, monkeypatch, arch, quantizer,
                                                          message):
    def no_allocation(*args, **kwargs):
        raise AssertionError("a network was built on the CPU")

    monkeypatch.setattr(torch.nn.Module, "to_empty", no_allocation)
    path = lying_file(tmp_path, arch, quantizer=quantizer)
    with pytest.raises(SpreadcodeError, match=f"^{path}: corrupt .*{message}"):
        load_catalyzer(path)


def test_non_finite_weights_are_refused(tmp_path):
    tensors = {k: v.contiguous().clone() for k, v in small_model().state_dict().items()}
    tensors["mlp.0.weight"][3, 1] = float("nan")
    path = lying_file(tmp_path, {"d_in": 96, "hidden": 32, "d_out": 8}, tensors)
    with pytest.raises(SpreadcodeError, match="weights hold NaN or Inf"):
        load_catalyzer(path)


def fixed_weights(module):
    """``module`` in eval mode with every tensor set to fixed, exactly representable values."""
    with torch.no_grad():
        for i, tensor in enumerate(module.state_dict().values()):
            if tensor.is_floating_point():
                tensor.copy_(((torch.arange(tensor.numel()) * (i + 3)) % 17 - 8)
                             .reshape(tensor.shape) / 16)
            else:
                tensor.fill_(i)
    return module.eval()


GOLDEN_TRAINING = {"seed": 3, "epochs": 2, "val_recall": {"1": 0.25, "10": 0.5, "100": 0.875},
                   "device": "cpu", "interrupted": False, "time_budget_s": None,
                   "note": "λ ünïcode"}


@pytest.mark.parametrize("model, quantizer, lam, sha", [
    (lambda: Catalyzer(6, 8, 4), QuantizerSpec("lattice", 8, 10), 0.02,
     "cab9fbfbb4711f6cdee2926f01c6f3f4ca59c78185deeab5f2887506371132e3"),
    (lambda: ResidualCatalyzer(6, ProductQuantizer(((12, 6), (6, 4))), 4, 5),
     QuantizerSpec("product", 18, ((12, 6), (6, 4))), None,
     "8553f5f75baeaa43261fae61cb1c4097ec6a6fcd495bbc7a5f4b9abfcb133e64"),
])
def test_model_file_bytes_are_fixed(tmp_path, model, quantizer, lam, sha):
    """The file-format invariant: fixed weights and metadata give these bytes (the hashes
    were computed with the metadata dict API of commit 2791244)."""
    model = fixed_weights(model())
    meta = CatalyzerMeta.for_model(model, quantizer, lam, GOLDEN_TRAINING)
    assert hashlib.sha256(catalyzer_bytes(model, meta)).hexdigest() == sha
    assert save_catalyzer(model, meta, store=tmp_path)[0] == sha
    loaded, loaded_meta = load_catalyzer(sha, store=tmp_path)
    assert loaded_meta == replace(meta, sha256=sha, path=str(tmp_path / f"{sha}.safetensors"))
    assert hashlib.sha256(catalyzer_bytes(loaded, loaded_meta)).hexdigest() == sha
