"""The OpenMP wait policy (`spreadcode.openmp`): set before torch loads, a user's own wins."""
import os
import subprocess
import sys

from spreadcode import openmp


def test_the_policy_is_a_short_spin_then_sleep_unless_the_user_chose():
    environ = {}
    openmp.set_wait_policy(environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(openmp.SPIN_COUNT)}
    for own in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}):
        environ = dict(own)
        openmp.set_wait_policy(environ)
        assert environ == own


def test_importing_any_module_of_the_package_sets_it_before_torch_loads():
    """A module that imports torch (here the catalyzer, as `spreadcode.Index` does) finds the
    policy in the environment when torch and its OpenMP runtime load."""
    environ = {name: value for name, value in os.environ.items()
               if name not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    probe = ("import builtins, os\n"
             "seen = {}\n"
             "load = builtins.__import__\n"
             "def spy(name, *args, **kwargs):\n"
             "    if name == 'torch' and not seen:\n"
             "        seen.update(policy=os.environ.get('OMP_WAIT_POLICY'),\n"
             "                    spin=os.environ.get('GOMP_SPINCOUNT'))\n"
             "    return load(name, *args, **kwargs)\n"
             "builtins.__import__ = spy\n"
             "import spreadcode.catalyzer\n"
             "print(seen['policy'], seen['spin'])\n")
    out = subprocess.run([sys.executable, "-c", probe], env=environ, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", str(openmp.SPIN_COUNT)]
