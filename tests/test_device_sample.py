"""`microgpt device sample` against the MicroPython VM behind a pty: names made on the "board" from
the weights its run left there, the same as the host's `microgpt sample` from those weights (seed,
temperature, prefix), and each fault a one-line error naming the fix."""
import shutil

import pytest
from conftest import cli
from vm_pty import VmPort

from microgpt import chip


def names(output):
    """The names of a sample listing (" 1 kamon" per line)."""
    return [line[3:] for line in output.splitlines()]


@pytest.fixture(scope="module", params=["c", "python"])
def trained(request, tmp_path_factory, names_path, micropython):
    """A board's filesystem after `device run --mode upload` (30 steps, 5 samples), and the run's report."""
    root = tmp_path_factory.mktemp(f"trained-{request.param}")
    with VmPort(root / "board") as board:
        code, out = cli("device", "run", "--mode", "upload", "--port", board.start().path, "--steps", 30,
                        "--samples", 5, "--val", 0, "--kernels", request.param, "--data", names_path,
                        "--report", root / "run" / "report.json", "--quiet")
    assert code == 0, out
    return root / "board", out.split("samples: ")[1].split("\n")[0].split(" ")


@pytest.fixture
def board_with_weights(trained, vm_board):
    """A board holding the trained run's files (each test its own copy)."""
    shutil.copytree(trained[0], vm_board.cwd, dirs_exist_ok=True)
    return vm_board


def test_the_board_samples_what_the_run_sampled_and_the_host_replays(board_with_weights, trained, tmp_path):
    code, out = cli("device", "sample", "--port", board_with_weights.path, "--count", 5)
    assert code == 0, out
    assert names(out) == trained[1]  # the run's seed (42) and temperature: the run's own samples
    weights = tmp_path / "w.bin"
    shutil.copy(board_with_weights.cwd / chip.WEIGHTS, weights)
    for args in (("--seed", 7), ("--prefix", "ka"), ("--prefix", "m", "--temperature", 1.5, "--seed", 3),
                 ("--prefix", "x" * 15, "--temperature", 2.0)):
        code, on_board = cli("device", "sample", "--port", board_with_weights.path, "--count", 8, *args)
        assert code == 0, on_board
        code, on_host = cli("sample", "--weights", weights, "--count", 8, *args)
        assert code == 0, on_host
        assert on_board == on_host, args
        prefix = dict(zip(args[::2], args[1::2])).get("--prefix", "")
        assert all(name.startswith(prefix) and len(name) <= 16 for name in names(on_board))


def test_weights_without_a_header_are_refused(board_with_weights):
    # A weights.bin from before the header (the bare 4,192 floats) is refused as any bytes of its
    # length would be: nothing tells them from floats.
    data = (board_with_weights.cwd / chip.WEIGHTS).read_bytes()
    (board_with_weights.cwd / chip.WEIGHTS).write_bytes(data[chip.WEIGHTS_HEAD.size:])
    code, out = cli("device", "sample", "--port", board_with_weights.path, "--count", 5)
    assert code == 1 and "weights.bin on the board is not microgpt weights (it does not begin with MGW1)" in out


def test_a_run_of_another_shape_samples_on_the_board_as_on_the_host(tmp_path, names_path, micropython):
    shape = ("--n-embd", 12, "--n-head", 3, "--n-layer", 2, "--block-size", 8)
    with VmPort(tmp_path / "board") as board:
        code, out = cli("device", "run", "--mode", "upload", "--port", board.start().path, "--steps", 10,
                        "--samples", 3, "--val", 0, *shape, "--data", names_path, "--report", tmp_path / "r" / "report.json",
                        "--quiet")
    assert code == 0, out
    shutil.copy(tmp_path / "board" / chip.WEIGHTS, tmp_path / "w.bin")
    with VmPort(tmp_path / "board") as board:
        code, on_board = cli("device", "sample", "--port", board.start().path, "--count", 8, "--prefix", "ka")
    code_host, on_host = cli("sample", "--weights", tmp_path / "w.bin", "--count", 8, "--prefix", "ka")
    assert code == code_host == 0 and on_board == on_host, (on_board, on_host)
    assert all(n.startswith("ka") and len(n) <= 8 for n in names(on_board))


def test_no_weights_on_the_board(board_with_weights):
    (board_with_weights.cwd / chip.WEIGHTS).unlink()
    code, out = cli("device", "sample", "--port", board_with_weights.path)
    assert code == 1 and out == "Error: there is no weights.bin on the board: run `microgpt device run` first\n"


def test_a_board_without_the_trainer(tmp_path, micropython):
    with VmPort(tmp_path / "board") as port:
        code, out = cli("device", "sample", "--port", port.start().path)
    assert code == 1 and "no microgpt trainer (its infer.mpy) on the board: run `microgpt device run` first" in out


def test_weights_of_another_shape_than_the_boards_run(board_with_weights):
    other = chip.Shape(n_embd=8, n_head=2, n_layer=1, block_size=16)
    head = chip.WEIGHTS_HEAD.pack(chip.WEIGHTS_MAGIC, *(getattr(other, k) for k in chip.KNOBS))
    (board_with_weights.cwd / chip.WEIGHTS).write_bytes(head + bytes(4 * other.n_params))
    code, out = cli("device", "sample", "--port", board_with_weights.path)
    assert code == 1 and out.count("\n") == 1, out
    assert ("weights.bin on the board is a model of n_embd 8, n_head 2, n_layer 1, block_size 16, but the board's "
            "last run trained n_embd 16, n_head 4, n_layer 1, block_size 16: run `microgpt device run` again") in out


def test_weights_cut_short(board_with_weights):
    (board_with_weights.cwd / chip.WEIGHTS).write_bytes((board_with_weights.cwd / chip.WEIGHTS).read_bytes()[:100])
    code, out = cli("device", "sample", "--port", board_with_weights.path)
    assert code == 1 and "weights.bin on the board is 100 bytes, not 16,780" in out and "did the run finish?" in out


@pytest.mark.parametrize("prefix, error", [
    ("Ka", "--prefix 'Ka': names are lowercase letters a-z"),
    ("a" * 16, "--prefix 'aaaaaaaaaaaaaaaa' is 16 letters: the model's names are at most 16 (its block size), so "
               "it leaves the model no letter to choose; give at most 15"),
])
def test_a_prefix_the_model_cannot_take(board_with_weights, prefix, error, tmp_path):
    code, out = cli("device", "sample", "--port", board_with_weights.path, "--prefix", prefix)
    assert code == 1 and out == f"Error: {error}\n"
    shutil.copy(board_with_weights.cwd / chip.WEIGHTS, tmp_path / "w.bin")
    assert cli("sample", "--weights", tmp_path / "w.bin", "--prefix", prefix) == (1, f"Error: {error}\n")


def test_not_micropython(tmp_path, monkeypatch):
    monkeypatch.setattr("microgpt.rawrepl.ENTER_TIMEOUT_S", 2)  # the answer it waits for never comes
    with VmPort(tmp_path / "board") as port:
        port.start(["cat"])  # something on the port that is not MicroPython
        code, out = cli("device", "sample", "--port", port.path)
    assert code == 1 and "refused the raw REPL" in out and "device flash" in out and out.count("\n") == 1
