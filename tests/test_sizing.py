"""eval/sizing.py counts the paper's components on the meta device (no hub, no memory)."""
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "eval"))
import sizing  # noqa: E402


def test_component_sizes_match_the_published_models():
    c = sizing.components(frames=16, llm_layers=8, embed_dim=1536)
    per_layer = c.pop("_llama_layer")
    x, p, y = c.values()
    assert 300e6 < x["frozen"] < 310e6 and x["tokens"] == 8 * 16 * 16  # ViT-L/16, 256 px, tubelet 2
    assert 60e6 < per_layer < 62e6  # a Llama-3.2-1B block: attention (GQA) + SwiGLU MLP
    assert p["trainable"] > 8 * per_layer and p["frozen"] == 128256 * 2048  # the token table
    assert 300e6 < y["trainable"] < 320e6  # EmbeddingGemma-300M + its dense layers + head
    half = sizing.components(frames=16, llm_layers=4, embed_dim=1536)
    assert list(half.values())[1]["trainable"] == p["trainable"] - 4 * per_layer


def test_report_prints_the_table_and_the_paper_budget(capsys):
    sizing.main(["--stage1-samples", "1e9"])
    out = capsys.readouterr().out
    assert "All parameters: 1.37 B" in out and "129,024 GPU-hours" in out
    assert "stage 1: 1,000,000,000 samples" in out
