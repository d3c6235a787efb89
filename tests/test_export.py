"""python -m tinylm.export: tinylm round trip (identical logits), HF GPT-2 export (same logits in transformers),
refusal for non-GPT-2 architectures, and the three kinds of SOURCE (model folder, run folder, MLflow run id)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from numerics import close, gap

from tinylm.checkpoint import load_pretrained, save_pretrained
from tinylm.config import Config, ConfigError
from tinylm.export import export, hf_config, hf_unsupported, main, resolve
from tinylm.model import GPT
from tinylm.tokenizer import train_char


def tiny(**kw) -> Config:
    return Config.from_name("debug", n_layer=2, n_head=2, n_embd=32, block_size=16, tokenizer="char", vocab_size=64,
                            **kw)


def make_run(path, cfg: Config, perturb: bool = True) -> str:
    """A run folder ``path/model`` with a random model (biases randomised too, so zero-bias bugs show)."""
    torch.manual_seed(0)
    model = GPT(cfg)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    tok = train_char(["hello world, tiny models export cleanly."], vocab_size=cfg.vocab_size)
    save_pretrained(os.path.join(path, "model"), model, cfg, tok, extra={"git_sha": "abc"})
    return str(path)


def logits(model, cfg: Config) -> torch.Tensor:
    x = torch.randint(cfg.vocab_size, (2, cfg.block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(x)[0], x


def test_roundtrip_identical_logits_and_generation(tmp_path):
    cfg = tiny(norm="rmsnorm", pos="rope", mlp="swiglu")  # any architecture round-trips in tinylm format
    run = make_run(tmp_path / "run", cfg)
    paths = export(run, out=str(tmp_path / "out"))
    assert set(os.listdir(paths["tinylm"])) >= {"model.safetensors", "config.json", "tokenizer.json", "meta.json"}
    m0, _, _ = load_pretrained(os.path.join(run, "model"))
    m1, cfg1, tok1 = load_pretrained(paths["tinylm"])
    assert cfg1 == cfg and tok1 is not None
    (a, _), (b, _) = logits(m0, cfg), logits(m1, cfg)
    assert torch.equal(a, b)
    prompt = torch.tensor([tok1.encode_ordinary("hello")])
    assert torch.equal(m0.generate(prompt, 5, temperature=0), m1.generate(prompt, 5, temperature=0))
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["git_sha"] == "abc" and meta["exported_from"].endswith("model")


@pytest.mark.parametrize("bias,tie", [(False, True), (True, True), (True, False)])
@pytest.mark.numerics
def test_hf_gpt2_same_logits(tmp_path, bias, tie):
    transformers = pytest.importorskip("transformers")
    cfg = tiny(bias=bias, tie_embeddings=tie)
    run = make_run(tmp_path / "run", cfg)
    paths = export(os.path.join(run, "model"), out=str(tmp_path / "out"), hf=True)
    # float64 on both sides: the point is that HF computes our function; in float32 the two implementations sum
    # in different orders, a CPU-dependent gap (tests/numerics.py), while a wrong weight layout is O(1)
    hf = transformers.GPT2LMHeadModel.from_pretrained(paths["hf"]).eval().double()
    assert hf.config.activation_function == "gelu" and hf.config.n_inner == cfg.ffn_hidden
    model, _, _ = load_pretrained(paths["tinylm"])
    ours, x = logits(model.double(), cfg)
    with torch.no_grad():
        theirs = hf(x).logits
    assert close(theirs, ours), gap(theirs, ours)
    assert os.path.isfile(os.path.join(paths["hf"], "tinylm_tokenizer.json"))


def test_exact_gelu_is_what_hf_gelu_means():
    """tinylm's MLP uses F.gelu (exact erf); HF's "gelu" must be the same function, "gelu_new" is not."""
    ACT2FN = pytest.importorskip("transformers.activations").ACT2FN

    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(ACT2FN["gelu"](x), torch.nn.functional.gelu(x), atol=0, rtol=0)
    assert (ACT2FN["gelu_new"](x) - torch.nn.functional.gelu(x)).abs().max() > 1e-5
    assert hf_config(tiny())["activation_function"] == "gelu"


@pytest.mark.parametrize("arch", [{"pos": "rope"}, {"norm": "rmsnorm"}, {"mlp": "swiglu"}])
def test_hf_refuses_non_gpt2_architectures(tmp_path, arch, capsys):
    run = make_run(tmp_path / "run", tiny(**arch))
    assert hf_unsupported(tiny(**arch))
    with pytest.raises(ConfigError, match="GPT-2-shaped.*" + "=".join(next(iter(arch.items())))):
        export(run, out=str(tmp_path / "out"), hf=True)
    assert not (tmp_path / "out").exists()  # refused before writing anything
    with pytest.raises(SystemExit, match="without --hf"):
        main([run, "--out", str(tmp_path / "out"), "--hf"])


def test_cli_and_default_out(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "trial_abc", tiny(), perturb=False)
    monkeypatch.chdir(tmp_path)
    paths = main([run])
    assert paths["tinylm"] == os.path.join("results", "exports", "trial_abc")
    assert "tinylm : results/exports/trial_abc" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="holds no model"):
        main([str(tmp_path)])


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_resolve_mlflow_run_id(tmp_path):
    from tinylm.tracking import Tracker

    root = tmp_path / "results"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, "glu")
    parent = tracker.start_sweep(f"glu@{root}", params={}, tags={"tinylm.sweep": "glu"})
    run_id = tracker.trial_run(parent, "t0001", tiny().to_dict())
    with pytest.raises(FileNotFoundError, match="has no model"):
        resolve(run_id, uri)
    make_run(root / "glu" / "trials" / "t0001", tiny(), perturb=False)
    assert resolve(run_id, uri) == str(root / "glu" / "trials" / "t0001" / "model")
    single = tracker.start_sweep(f"single:{tmp_path / 'one'}", params={}, tags={"tinylm.sweep": "single-runs"})
    rid = tracker.trial_run(single, "one", tiny().to_dict())
    make_run(tmp_path / "one", tiny(), perturb=False)
    assert resolve(rid, uri) == str(tmp_path / "one" / "model")
    with pytest.raises(FileNotFoundError, match="not a folder nor an MLflow run id"):
        resolve("0123abcd", uri)
