"""A tiny BPE tokenizer (sentencepiece) trained on the training captions.

Big text-to-video models borrow a pretrained T5 or LLM tokenizer; here the
captions use about twenty distinct words, so a BPE model trained on them in a
second is enough, and nothing is downloaded. The saved file is one JSON holding
the sentencepiece model and the words seen in training, so that prompts with
words the text encoder never saw can be named in a warning.

    tok = Tokenizer.train(captions)          # or Tokenizer.load("tokenizer.json")
    ids, mask = tok.encode(["digit 3 is moving up and down"], max_len=32)
"""
import base64
import io
import json
import warnings

import sentencepiece as spm
import torch

from data.checkpoint import save_atomic

PAD, UNK = 0, 1


class Tokenizer:
    def __init__(self, model_proto, words):
        self.proto = model_proto
        self.words = set(words)
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, captions, vocab_size=128):
        captions = [c for c in captions if c.strip()]
        if not captions:
            raise ValueError("cannot train a tokenizer on no captions")
        model = io.BytesIO()
        # hard_vocab_limit=False: a corpus this small may not support vocab_size pieces, so take
        # as many as it does (every caption word becomes one piece) instead of failing.
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(captions), model_writer=model, model_type="bpe",
            vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
            pad_id=PAD, unk_id=UNK, bos_id=-1, eos_id=-1, minloglevel=2)
        return cls(model.getvalue(), {w for c in captions for w in c.split()})

    @property
    def vocab_size(self):
        return self.sp.get_piece_size()

    def state_dict(self):
        return {"sentencepiece": base64.b64encode(self.proto).decode(), "words": sorted(self.words)}

    @classmethod
    def from_state_dict(cls, state):
        return cls(base64.b64decode(state["sentencepiece"]), state["words"])

    def save(self, path):
        save_atomic(path, lambda f: f.write(json.dumps(self.state_dict()).encode()))

    @classmethod
    def load(cls, path):
        try:
            with open(path) as f:
                return cls.from_state_dict(json.load(f))
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cannot load tokenizer from {path}: {e}") from e

    def encode(self, prompts, max_len):
        """ids (B, max_len) long, padded with PAD; mask (B, max_len) bool, True on real tokens."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = torch.full((len(prompts), max_len), PAD, dtype=torch.long)
        mask = torch.zeros(len(prompts), max_len, dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            if not prompt.strip():
                raise ValueError(f"prompt {i} is empty: every prompt needs at least one word")
            unseen = [w for w in prompt.split() if w not in self.words]
            if unseen:
                warnings.warn(f"prompt {prompt!r} has words the tokenizer never saw in training: "
                              f"{', '.join(unseen)}; the model has not learnt what they mean", stacklevel=2)
            pieces = self.sp.encode(prompt)
            if len(pieces) > max_len:
                shown = prompt if len(prompt) <= 80 else prompt[:77] + "..."
                raise ValueError(f"prompt {shown!r} is {len(pieces)} tokens, more than the {max_len} the text "
                                 "encoder takes: shorten it")
            ids[i, :len(pieces)] = torch.tensor(pieces)
            mask[i, :len(pieces)] = True
        return ids, mask

    def decode(self, ids, mask=None):
        ids = ids.tolist() if mask is None else [row[m].tolist() for row, m in zip(ids, mask)]
        return [self.sp.decode([t for t in row if t != PAD]) for row in ids]
