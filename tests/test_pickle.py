"""lit._pickle: the restricted unpickler reads data of every protocol and refuses code."""

import pickle
import warnings

import numpy as np
import pytest
from pickle_payloads import ExecPayload

from lit._pickle import UnsafePickleError, restricted_load, restricted_loads


def test_malicious_payload_would_really_run_with_plain_pickle(tmp_path):
    # sanity check of the payloads above: an unrestricted load does create the marker
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(ExecPayload(marker)))
    assert marker.exists()


def test_restricted_unpickler_reads_data_of_every_protocol():
    import collections

    obj = {"arr": np.arange(6, dtype=np.float32).reshape(2, 3), "s": {1, 2}, "f": frozenset("ab"),
           "o": collections.OrderedDict(a=1), "c": 1 + 2j, "b": b"\x00\xff", "n": None,
           "scalar": np.int64(7), "t": (1.5, "x", True), "rec": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")])}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        out = restricted_loads(pickle.dumps(obj, protocol=protocol))
        np.testing.assert_array_equal(out["arr"], obj["arr"])
        assert out["arr"].dtype == np.float32
        assert out["s"] == {1, 2} and out["f"] == frozenset("ab") and out["o"] == obj["o"]
        assert out["b"] == b"\x00\xff" and out["scalar"] == 7 and out["t"] == obj["t"]
        assert out["rec"].dtype == obj["rec"].dtype


def test_python2_strings_are_decoded_as_latin1(tmp_path):
    # protocol 2, a Python 2 ``str`` (SHORT_BINSTRING) and a ``__builtin__.set``
    data = b"\x80\x02}q\x00(U\x04name\x71\x01U\x04caf\xe9q\x02U\x01s" \
           b"c__builtin__\nset\nq\x03]q\x04K\x01a\x85q\x05Rq\x06u."
    path = tmp_path / "py2.pkl"
    path.write_bytes(data)
    assert restricted_load(path) == {"name": "caf\xe9", "s": {1}}
    with open(path, "rb") as f:
        assert restricted_load(f)["s"] == {1}


def test_restricted_unpickler_refuses_other_globals_and_codecs():
    with pytest.raises(UnsafePickleError, match="subprocess.Popen"):
        restricted_loads(b"csubprocess\nPopen\n.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        restricted_loads(pickle.dumps(eval))
    # _codecs.encode is only allowed with text codecs (what protocol-2 bytes need)
    with pytest.raises(UnsafePickleError, match="codec"):
        restricted_loads(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(ValueError, match="not a readable pickle"):
        restricted_loads(pickle.dumps([1, 2, 3])[:-3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy.core deprecation warning either
        restricted_loads(pickle.dumps(np.arange(3), protocol=2))
