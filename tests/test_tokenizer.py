import pytest
import torch

from data.moving_mnist import MovingMNIST
from data.tokenizer import PAD, Tokenizer


@pytest.fixture(scope="module")
def tok():
    ds = MovingMNIST("train", num_frames=1, length=500)
    return Tokenizer.train([ds[i][1] for i in range(len(ds))])


def test_roundtrip_and_mask(tok):
    prompts = ["digit 3 is moving up and down", "digit 3 is moving up and down and digit 7 is moving left and right"]
    ids, mask = tok.encode(prompts, max_len=24)
    assert ids.shape == mask.shape == (2, 24) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert tok.decode(ids, mask) == prompts
    assert torch.all(ids[~mask] == PAD) and torch.all(ids[mask] != PAD)
    assert mask[0].sum() < mask[1].sum()
    assert mask[0].sum() == 7  # every caption word is one piece


def test_save_load(tok, tmp_path):
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    again = Tokenizer.load(path)
    a, b = tok.encode(["digit 9 is moving left and right"], 16), again.encode(["digit 9 is moving left and right"], 16)
    assert torch.equal(a[0], b[0]) and again.vocab_size == tok.vocab_size
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Tokenizer.load(str(tmp_path / "bad.json"))


def test_empty_prompt_is_an_error(tok):
    with pytest.raises(ValueError, match="empty"):
        tok.encode(["digit 1 is moving up and down", "   "], 16)


def test_unseen_words_are_named(tok):
    with pytest.warns(UserWarning, match="dancing, wildly"):
        tok.encode(["digit 3 is dancing wildly"], 32)


def test_too_long_prompt(tok):
    with pytest.raises(ValueError, match="is 7 tokens, more than the 3 the text encoder takes: shorten it"):
        tok.encode(["digit 3 is moving up and down"], 3)
