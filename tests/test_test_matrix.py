"""`make test`'s runtime matrix: each leg's counts are recorded and a failing leg fails the run."""
import os
import subprocess
import sys

LEG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "test_leg.sh")


def run_leg(tmp_path, label, script):
    matrix = tmp_path / "matrix.txt"
    done = subprocess.run([LEG, str(matrix), label, sys.executable, "-c", script], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    return done, matrix.read_text()


def test_a_leg_records_pytests_summary_and_keeps_its_output(tmp_path):
    done, matrix = run_leg(tmp_path, "avx2 (test)", "print('..s'); print('2 passed, 1 skipped in 0.50s')")
    assert done.returncode == 0
    assert done.stdout.startswith("==== test leg: avx2 (test)\n..s\n2 passed, 1 skipped in 0.50s\n")
    assert matrix.startswith("avx2 (test):") and "2 passed, 1 skipped in 0.50s (exit 0, " in matrix


def test_a_failing_leg_fails_with_its_status_and_counts(tmp_path):
    done, matrix = run_leg(tmp_path, "mxnet16 (test)",
                           "print('== 1 failed, 3 passed in 1.00s =='); raise SystemExit(1)")
    assert done.returncode == 1
    assert "1 failed, 3 passed in 1.00s (exit 1, " in matrix


def test_a_leg_that_printed_no_summary_says_so(tmp_path):
    done, matrix = run_leg(tmp_path, "broken", "import sys; sys.stderr.write('ImportError: no mxnet\\n'); sys.exit(4)")
    assert done.returncode == 4 and "ImportError: no mxnet" in done.stdout
    assert "broken:" in matrix and "no pytest summary (exit 4, " in matrix
