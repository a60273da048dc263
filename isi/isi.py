from hf_isi.evaluate_isi import Isi, __test__  # noqa: F401
