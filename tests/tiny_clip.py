"""A tiny random CLIP in BGE-VL's folder layout, built offline for tests: a transformers
``CLIPModel`` (image 32, patch 8: 17 vision tokens; 77 text positions), a CLIP BPE
tokenizer trained on a few captions (``vocab.json`` + ``merges.txt`` in OpenAI's layout,
and the ``tokenizer.json`` transformers converts them to), a ``preprocessor_config.json``,
and an ``auto_map`` to remote code that must never run (importing it writes a marker
file and fails)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

CAPTIONS = [
    "a photo of an astronaut in a white space suit",
    "a cup of coffee on a wooden table",
    "a cat sitting on a chair looking at the camera",
    "a rocket on the launch pad at night",
    "make the background dark as if the photo was taken at night",
    "the same dress in red with long sleeves",
    "a dog running on the beach near the sea",
] * 3

IMAGE_SIZE = 32
PATCH = 8
VISION_TOKENS = 1 + (IMAGE_SIZE // PATCH) ** 2
PROJECTION = 16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# What the remote code would leave behind if anything imported it.
REMOTE_MARKER = "remote_code_ran.txt"


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP's printable stand-ins for the 256 byte values, in CLIP's vocab order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_vocab(path: Path, merges_wanted: int = 120) -> int:
    """``vocab.json`` and ``merges.txt`` as OpenAI's CLIP lays them out (the 256 byte
    symbols, the same with ``</w>``, one token per merge, then the start and end tokens:
    the end token has the highest id), with merges learned from :data:`CAPTIONS`. Returns
    the vocabulary size."""
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                "removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    symbols = _bytes_to_unicode()
    trainer = trainers.BpeTrainer(
        vocab_size=2 * 256 + merges_wanted,
        initial_alphabet=symbols,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(CAPTIONS, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    pairs = [m if isinstance(m, str) else " ".join(m) for m in merges]
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(p.split(" ")) for p in pairs]
    vocab_list += [BOS, EOS]
    vocab = {}
    for token in vocab_list:  # a merge may rebuild a base symbol: keep the first id
        vocab.setdefault(token, len(vocab))
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(pairs) + "\n", encoding="utf-8")
    return len(vocab)


def clip_config(vocab_size: int, bos_id: int) -> CLIPConfig:
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": bos_id,
        # OpenAI's configs say 2 (before transformers' PR #24773): the text pools the
        # highest id, the end token, as BGE-VL's config does.
        "eos_token_id": 2,
        "pad_token_id": 1,
        "initializer_factor": 4.0,
    }
    vision = {
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH,
        "initializer_factor": 4.0,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION)


def preprocessor_config(size: int = IMAGE_SIZE) -> dict[str, object]:
    """What ``CLIPImageProcessor.save_pretrained`` writes (OpenAI's mean and std)."""
    return {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": size},
    }


REMOTE_CODE = f"""
from pathlib import Path
Path(__file__).with_name("{REMOTE_MARKER}").write_text("imported")
raise RuntimeError("remote code ran")
"""


def build_clip(path: Path, seed: int = 0) -> Path:
    """The tiny BGE-VL-like folder at ``path`` (see the module)."""
    torch.manual_seed(seed)
    vocab_size = write_clip_vocab(path)
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    model = CLIPModel(clip_config(vocab_size, vocab[BOS])).eval()
    model.save_pretrained(path)
    # transformers converts vocab.json + merges.txt, as for OpenAI's CLIP folders
    CLIPTokenizer.from_pretrained(path, model_max_length=77).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))
    config = json.loads((path / "config.json").read_text())
    # BGE-VL's hub config names its remote class; bgekit must build CLIPModel itself
    config["architectures"] = ["MMRet_CLIP"]
    config["auto_map"] = {
        "AutoConfig": "configuration_boom.BoomConfig",
        "AutoModel": "modeling_boom.MMRet_CLIP",
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    for module in ("modeling_boom.py", "configuration_boom.py"):
        (path / module).write_text(REMOTE_CODE)
    return path
