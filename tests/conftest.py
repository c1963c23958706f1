"""Test-suite options: ``--fuzz-examples N`` (or $SPREADCODE_FUZZ_EXAMPLES) sets how many
inputs the property-based fuzz tests try (tests/test_fuzz_spc.py)."""
import os

import pytest

FUZZ_EXAMPLES = 300


def pytest_addoption(parser):
    parser.addoption(
        "--fuzz-examples", type=int, default=None, metavar="N",
        help=f"examples per fuzz test [default: $SPREADCODE_FUZZ_EXAMPLES or {FUZZ_EXAMPLES}; "
             "the test marked fuzz_long uses 30 times as many]")


@pytest.fixture(scope="session")
def fuzz_examples(request):
    """Examples per fuzz test: --fuzz-examples, else $SPREADCODE_FUZZ_EXAMPLES, else 300."""
    option = request.config.getoption("--fuzz-examples")
    return option if option is not None else int(os.environ.get("SPREADCODE_FUZZ_EXAMPLES",
                                                                FUZZ_EXAMPLES))
