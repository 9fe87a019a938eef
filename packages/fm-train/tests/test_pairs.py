"""fm_train.pairs.PairStore: round trip, resume, refusal of other settings, and the folder as untrusted input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save as st_save

from fm_train import PairStore

FIELDS = {"x0": ((2,), torch.float32), "x1": ((2,), torch.float32), "y": ((), torch.int64)}
SETTINGS = {"teacher": "runs/t", "seed": 0, "method": "midpoint", "nfe": 16, "guidance": 1.5}


def _rows(lo: int, hi: int) -> dict[str, torch.Tensor]:
    """Rows [lo, hi) of a known data set: x0 = (i, -i), x1 = (2 i, 0.5), y = i mod 3."""
    i = torch.arange(lo, hi, dtype=torch.float32)
    return {
        "x0": torch.stack([i, -i], 1),
        "x1": torch.stack([2 * i, torch.full_like(i, 0.5)], 1),
        "y": torch.arange(lo, hi) % 3,
    }


def _store(path, n=10, chunk=4, settings=SETTINGS, fields=FIELDS) -> PairStore:
    s = PairStore(path)
    s.begin(n=n, chunk=chunk, fields=fields, settings=settings)
    return s


def _fill(s: PairStore, chunks=None) -> None:
    for k in s.missing_chunks() if chunks is None else chunks:
        r = s.chunk_rows(k)
        s.write_chunk(k, **_rows(r.start, r.stop))


def test_round_trip_in_chunks(tmp_path):
    s = _store(tmp_path / "p")
    assert s.num_chunks == 3 and s.missing_chunks() == [0, 1, 2]
    assert [list(s.chunk_rows(k)) for k in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    _fill(s)
    assert s.missing_chunks() == []
    data = s.load()
    want = _rows(0, 10)
    assert set(data) == {"x0", "x1", "y"}
    for k in want:
        assert torch.equal(data[k], want[k]) and data[k].dtype == want[k].dtype
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "chunk-00000.safetensors",
        "chunk-00001.safetensors",
        "chunk-00002.safetensors",
        "manifest.json",
    ]  # no temporary files left


def test_resume_writes_only_what_is_missing(tmp_path):
    s = _store(tmp_path / "p")
    _fill(s, [0, 2])
    again = _store(tmp_path / "p")  # a new process: same settings, same layout
    assert again.missing_chunks() == [1]
    _fill(again)
    assert torch.equal(again.load()["x1"], _rows(0, 10)["x1"])


def test_a_chunk_file_without_its_checksum_is_written_again(tmp_path):
    s = _store(tmp_path / "p")
    _fill(s)
    m = json.loads((tmp_path / "p/manifest.json").read_text())
    del m["chunks"]["1"]  # killed after the chunk file, before the manifest
    (tmp_path / "p/manifest.json").write_text(json.dumps(m))
    assert _store(tmp_path / "p").missing_chunks() == [1]


def test_a_damaged_chunk_is_missing_and_refused_by_load(tmp_path):
    s = _store(tmp_path / "p")
    _fill(s)
    f = tmp_path / "p/chunk-00001.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    assert s.missing_chunks() == [1]
    with pytest.raises(ValueError, match=r"chunk-00001\.safetensors: checksum differs"):
        s.load()
    f.unlink()
    assert s.missing_chunks() == [1]
    with pytest.raises(ValueError, match=r"chunk-00001\.safetensors: missing file"):
        s.load()


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"settings": {**SETTINGS, "seed": 1}}, r"other settings \(seed: 0 vs 1"),
        ({"settings": {**SETTINGS, "teacher": "runs/u"}}, r"other settings \(teacher"),
        ({"n": 12}, "other n"),
        ({"chunk": 5}, "other chunk"),
        ({"fields": {**FIELDS, "x1": ((3,), torch.float32)}}, "other fields"),
        ({"fields": {**FIELDS, "x1": ((2,), torch.float64)}}, "other fields"),
    ],
)
def test_a_store_begun_otherwise_is_refused(tmp_path, change, what):
    _fill(_store(tmp_path / "p"), [0])
    kw = {"n": 10, "chunk": 4, "settings": SETTINGS, "fields": FIELDS, **change}
    with pytest.raises(ValueError, match=r"manifest\.json: this store was begun with " + what):
        PairStore(tmp_path / "p").begin(**kw)


def test_load_needs_every_chunk(tmp_path):
    s = _store(tmp_path / "p")
    _fill(s, [1])
    with pytest.raises(ValueError, match=r"manifest\.json: 2 of 3 chunks not written \(0, 2\)"):
        s.load()


def _rewrite_chunk(path, k, tensors):
    """Replace chunk k by ``tensors`` and record its true checksum: only the content checks can catch it."""
    import hashlib

    data = st_save(tensors)
    (path / f"chunk-{k:05d}.safetensors").write_bytes(data)
    m = json.loads((path / "manifest.json").read_text())
    m["chunks"][str(k)] = hashlib.sha256(data).hexdigest()
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda t: {**t, "x0": t["x0"][:3]}, r"x0 must be a float32 tensor of shape \[4, 2\], found float32 \[3, 2\]"),
        (lambda t: {**t, "x1": t["x1"].double()}, r"x1 must be a float32 tensor of shape \[4, 2\], found float64"),
        (lambda t: {**t, "y": t["y"].int()}, "y must be a int64 tensor"),
        (lambda t: {**t, "x1": t["x1"].index_fill(0, torch.tensor([2]), float("nan"))}, "x1 holds NaN"),
        (lambda t: {**t, "extra": torch.zeros(1)}, r"holds \['extra', 'x0', 'x1', 'y'\]"),
        (lambda t: {k: v for k, v in t.items() if k != "y"}, r"holds \['x0', 'x1'\], the manifest lists"),
    ],
)
def test_load_checks_every_chunk_content(tmp_path, edit, what):
    s = _store(tmp_path / "p")
    _fill(s)
    _rewrite_chunk(tmp_path / "p", 1, edit(_rows(4, 8)))
    with pytest.raises(ValueError, match=r"chunk-00001\.safetensors: " + what):
        s.load()


def test_an_unparseable_chunk_with_a_matching_checksum_is_refused(tmp_path):
    s = _store(tmp_path / "p")
    _fill(s)
    import hashlib

    junk = b"\xff" * 40
    (tmp_path / "p/chunk-00000.safetensors").write_bytes(junk)
    m = json.loads((tmp_path / "p/manifest.json").read_text())
    m["chunks"]["0"] = hashlib.sha256(junk).hexdigest()
    (tmp_path / "p/manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"chunk-00000\.safetensors: not a readable safetensors file"):
        s.load()


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda m: "[1, 2]", "expected a JSON object, found list"),
        (lambda m: {**m, "format_version": 2}, "unsupported format_version 2"),
        (lambda m: {**m, "format": "other"}, "format must be"),
        (lambda m: {**m, "n": -1}, r"n must be an integer in \[1, "),
        (lambda m: {**m, "n": True}, r"n must be an integer in \[1, "),
        (lambda m: {**m, "chunk": 1.5}, r"chunk must be an integer in \[1, "),
        (lambda m: {**m, "chunks": {"7": "0" * 64}}, r"chunks has an entry '7'; the store has chunks 0..2"),
        (lambda m: {**m, "chunks": {"01": "0" * 64}}, r"chunks has an entry '01'"),
        (lambda m: {**m, "chunks": {"0": "xyz"}}, "chunks.0 must be a sha256 hex digest"),
        (lambda m: {**m, "fields": {"x0": {"shape": [-2], "dtype": "float32"}}}, r"fields\.x0: shape must be"),
        (lambda m: {**m, "fields": {"x0": {"shape": [2], "dtype": "object"}}}, r"fields\.x0: dtype 'object'"),
        (lambda m: {**m, "fields": {"x0": {"shape": [2]}}}, r"fields\.x0 must hold exactly shape and dtype"),
        (lambda m: {**m, "fields": {"x0": {"shape": [2], "dtype": [1]}}}, r"fields\.x0: dtype \[1\] is not one of"),
        (lambda m: {**m, "fields": {"x0": {"shape": 2, "dtype": "float32"}}}, r"fields\.x0: shape must be"),
        (lambda m: {**m, "settings": [1]}, "settings must be a JSON object"),
        (lambda m: {**m, "owner": "x"}, r"not a pair-store manifest \(unexpected 'owner'\)"),
        (lambda m: {**{k: v for k, v in m.items() if k != "chunks"}}, r"not a pair-store manifest \(missing chunks\)"),
    ],
)
def test_a_bad_manifest_is_a_one_line_error_naming_it(tmp_path, edit, what):
    _fill(_store(tmp_path / "p"), [0])
    p = tmp_path / "p/manifest.json"
    new = edit(json.loads(p.read_text()))
    p.write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(ValueError, match=r"manifest\.json: " + what) as err:
        _store(tmp_path / "p")
    assert "\n" not in str(err.value)


def test_not_json_manifest(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p/manifest.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"manifest\.json: not valid JSON"):
        _store(tmp_path / "p")


def test_write_chunk_checks_what_it_writes(tmp_path):
    s = _store(tmp_path / "p")
    good = _rows(0, 4)
    with pytest.raises(ValueError, match=r"needs exactly the fields \['x0', 'x1', 'y'\]"):
        s.write_chunk(0, x0=good["x0"], x1=good["x1"])
    with pytest.raises(ValueError, match=r"chunk 2: x0 must be a float32 tensor of shape \[2, 2\]"):
        s.write_chunk(2, **good)
    with pytest.raises(ValueError, match="chunk 0: x1 holds NaN"):
        s.write_chunk(0, **{**good, "x1": torch.full((4, 2), float("inf"))})
    with pytest.raises(ValueError, match=r"chunk index must be an integer in \[0, 3\)"):
        s.write_chunk(3, **good)
    assert s.missing_chunks() == [0, 1, 2]  # nothing was written


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "p").write_text("not a folder")
    with pytest.raises(ValueError, match="p: exists and is not a folder"):
        _store(tmp_path / "p")


def test_settings_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="settings must hold JSON values only"):
        _store(tmp_path / "p", settings={"lr": float("nan")})
    with pytest.raises(ValueError, match="settings must hold JSON values only"):
        _store(tmp_path / "q", settings={"model": object()})
    with pytest.raises(ValueError, match="call begin"):
        PairStore(tmp_path / "r").missing_chunks()
    # a tuple and a list are the same JSON: the store reopens
    _store(tmp_path / "s", settings={"shape": (1, 28, 28)})
    assert _store(tmp_path / "s", settings={"shape": [1, 28, 28]}).missing_chunks() == [0, 1, 2]
