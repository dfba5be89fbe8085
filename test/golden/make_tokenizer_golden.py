"""Golden token ids of Hugging Face `tokenizers` and chat prompts of
`transformers` for DeepSeek-V3's tokenizer.

Runs where tokenizers and transformers are installed (the GPU machine; no GPU
and no hub access are needed: everything is read from the local tokenizer
directory). For every string of tokenizer_strings.json it records
`Tokenizer.from_file(tokenizer.json).encode(text, add_special_tokens=False)`;
for every conversation, the text of transformers' `apply_chat_template(
tokenize=False)` and the ids of that text. test/runtime/TokenizerTest.cpp
requires Kiln's C++ tokenizer to match all of it exactly.

The chat template is rendered by `PreTrainedTokenizerFast`, not
`AutoTokenizer`: DeepSeek-V3's tokenizer_config.json names
"LlamaTokenizerFast", and transformers 5 (5.17 checked) then builds its
SentencePiece LlamaTokenizer, replacing tokenizer.json's ByteLevel
pre-tokenizer with Metaspace, so its ids are wrong (spaces dropped, CJK
lost; huggingface/transformers issue 45488). PreTrainedTokenizerFast keeps
tokenizer.json's pipeline; its rendering of the template is the same.

Usage: python3 make_tokenizer_golden.py [TOKENIZER_DIR [STRINGS_JSON [OUT_JSON]]]
defaults: .deps/deepseek-v3-tokenizer, test/golden/tokenizer_strings.json,
test/golden/tokenizer_golden.json (relative to the repository root).
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def chat_ids(hf, messages, add_generation_prompt):
    """Ids of apply_chat_template(tokenize=True), whichever shape this
    transformers version returns them in."""
    result = hf.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(result, "keys"):
        result = result["input_ids"]
    return [int(i) for i in result]


def main(argv):
    tokenizer_dir = argv[1] if len(argv) > 1 else os.path.join(REPO, ".deps/deepseek-v3-tokenizer")
    strings_path = argv[2] if len(argv) > 2 else os.path.join(REPO, "test/golden/tokenizer_strings.json")
    out_path = argv[3] if len(argv) > 3 else os.path.join(REPO, "test/golden/tokenizer_golden.json")

    tokenizer = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    hf = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir, local_files_only=True)
    with open(strings_path, encoding="utf-8") as f:
        inputs = json.load(f)

    strings = []
    for text in inputs["strings"]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        strings.append({"text": text, "ids": ids})

    chat = []
    for conversation in inputs["chats"]:
        messages = conversation["messages"]
        add_generation_prompt = conversation["add_generation_prompt"]
        text = hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        # The chat template emits BOS as text; tokenizing the prompt must not
        # add a second one. transformers' own tokenization must agree.
        if chat_ids(hf, messages, add_generation_prompt) != ids:
            raise SystemExit(f"apply_chat_template(tokenize=True) disagrees on {messages!r}")
        chat.append({"messages": messages, "add_generation_prompt": add_generation_prompt,
                     "text": text, "ids": ids})

    note = (f"Made by test/golden/make_tokenizer_golden.py with tokenizers {tokenizers.__version__} "
            f"and transformers {transformers.__version__} from tokenizer_strings.json.")
    # One entry per line keeps the file small and its diffs readable.
    def line(entry):
        return "  " + json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("{\n")
        f.write(f' "note": {json.dumps(note)},\n')
        f.write(' "strings": [\n' + ",\n".join(line(e) for e in strings) + "\n ],\n")
        f.write(' "chat": [\n' + ",\n".join(line(e) for e in chat) + "\n ]\n")
        f.write("}\n")
    print(f"wrote {out_path}: {len(strings)} strings, {len(chat)} conversations")


if __name__ == "__main__":
    main(sys.argv)
