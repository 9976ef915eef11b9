"""
discriminator.py — Token-Level Relevance Discriminator: which response tokens matter for which rubric.

Paper:    RTT §3 (Token-Level Relevance Discriminator) and its appendix on training data; RTT_SPEC.md §4.
Input:    prompts (B dicts with "rubrics"), response token ids (B, G, T) and token_mask (B, G, T)
Output:   relevance w (B, G, K, T) float32 in [0, 1]: w[b,g,k,t] = how much token t of response (b,g)
          matters for rubric k; 0 on padded tokens and padded rubrics.

Model:    any transformers backbone with a one-output linear head per token
          (AutoModelForTokenClassification, num_labels = 1) and a sigmoid on top, trained with binary
          cross-entropy on 0/1 labels of the RESPONSE tokens only. One sequence per (response, rubric):
              "Identify which tokens in the response are relevant to the criteria.\\n\\nCriteria: {rubric}"
              "\\n\\nResponse:\\n\\n" + response tokens
          The question is not part of the input (as in the authors' code). The response keeps the policy's
          own token ids (the discriminator shares the policy's tokenizer), including its end-of-sequence
          token: a causal backbone sees only the left context, so without it no position can know that a
          word is the last one (RTT_SPEC §4 trap 1). `python discriminator.py --compare-backbones`
          measures a causal and a bidirectional backbone per rubric type.
Labels:   (a) minimal pairs: a response that meets every rubric, a minimal edit that breaks exactly one,
          and the token diff between the two labelled 1 on BOTH sides (the paper's construction); on
          Rubric World the edits are programmatic (data.py), for real data an LLM editor proposes them and
          a judge must confirm that the target verdict flipped; (b) the greedy baseline: an LLM quotes the
          relevant segments as JSON and the quotes are matched back to tokens by character offsets;
          (c) your own character spans in JSONL.
Metrics:  token precision / recall / F1 at 0.5, rank-based AUROC, and the rate at which the top-scored
          token of a VIOLATED rubric is truly relevant; per rubric type and side, on held-out prompts and
          on rubric combinations never seen in training, beside uniform, random and greedy baselines.
          Some diff labels cannot be recovered from one response (RTT_SPEC §4 trap 2: the filler that
          replaced a required word is a random word); they are reported apart as "not_identifiable".

Deviations from the paper (tagged `# DEVIATION(n)` in the code):
  1. The toy discriminator is a tiny model built from a config (a 2-layer bidirectional encoder by
     default, not the policy's causal LM) and trained in minutes on programmatic minimal pairs (the
     paper fine-tunes an LLM on LLM-edited pairs).
  2. On Rubric World the greedy baseline's "LLM" is a deterministic rule-based quoter (it quotes every
     occurrence of the words the rubric names); with real data it is any local causal LM.
  3. Relevance is computed without gradient and kept in float32 (the authors' code writes it into an
     integer buffer, truncating soft weights to 0; RTT_SPEC §6.2).

Demo:     python discriminator.py --json out/discriminator.json       (train on Rubric World, all metrics)
          python discriminator.py --heatmap out/heatmap.png           (per-rubric heat map of one response)
"""

import argparse
import difflib
import hashlib
import html
import json
import math
import os
import random
import shutil
import time
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoModelForTokenClassification, AutoTokenizer, BertConfig, LlamaConfig

from rewards import pad_rubrics

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size
#   M (response, rubric) pairs fed to the discriminator (M ≤ N·K)     L discriminator sequence length

INSTRUCTION = ("Identify which tokens in the response are relevant to the criteria.\n\n"
               "Criteria: {rubric}\n\nResponse:\n\n")
META_FILE = "rtt_discriminator.json"          # written next to the weights by save_discriminator


# ============================================================================ model
def build_toy_discriminator(tokenizer, backbone: str = "bidirectional", hidden: int = 64, layers: int = 2,
                            heads: int = 4, intermediate: int = 128, max_len: int = 256, seed: int = 0):
    """A tiny token classifier (1 logit per token) over `tokenizer`'s vocabulary, built from a config.

    backbone "causal": a Llama (left context only; needs the end-of-sequence token in the response).
    backbone "bidirectional": a BERT encoder (every token sees the whole sequence).
    Dropout is 0: the toy model is tiny and trained briefly, and inference must be deterministic.
    """
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=intermediate, num_labels=1,
                  pad_token_id=tokenizer.pad_token_id)
    if backbone == "causal":
        config = LlamaConfig(num_key_value_heads=heads, max_position_embeddings=max_len,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **common)
    elif backbone == "bidirectional":
        config = BertConfig(max_position_embeddings=max_len, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0, classifier_dropout=0.0, **common)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; choose 'causal' or 'bidirectional'")
    return AutoModelForTokenClassification.from_config(config)


def vocab_fingerprint(tokenizer) -> list:
    """What must match for token ids to be reused: the vocabulary (token -> id) and the pad/eos ids."""
    return [sorted(tokenizer.get_vocab().items()), tokenizer.pad_token_id, tokenizer.eos_token_id]


def check_same_tokenizer(disc_tokenizer, policy_tokenizer) -> None:
    """Raise a ValueError when the policy's token ids would mean different tokens to the discriminator."""
    if vocab_fingerprint(disc_tokenizer) != vocab_fingerprint(policy_tokenizer):
        raise ValueError(
            "the discriminator's tokenizer differs from the policy's (vocabulary of "
            f"{len(disc_tokenizer)} vs {len(policy_tokenizer)} tokens, or different pad/eos ids): the policy's "
            "token ids cannot be reused. Train the discriminator on the policy's tokenizer "
            "(a checkpoint of another tokenizer family cannot read these ids).")


def save_discriminator(model, tokenizer, path: str, meta: dict | None = None) -> None:
    """save_pretrained (weights + config + tokenizer) into a temporary folder, then rename it into place,
    so a crash mid-save never leaves a half-written checkpoint at `path`."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.abspath(path) + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, META_FILE), "w") as f:
        json.dump({"instruction": INSTRUCTION, **(meta or {})}, f, indent=1)
    old = os.path.abspath(path) + f".old{os.getpid()}"
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_discriminator(path: str, policy_tokenizer=None, device: str = "cpu"):
    """Load (model, tokenizer) saved by save_discriminator (or any token-classification checkpoint with one
    label). With `policy_tokenizer`, refuse a checkpoint whose tokenizer would read the policy's ids differently."""
    if not os.path.isdir(path):
        raise ValueError(f"no discriminator checkpoint at {path!r}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if policy_tokenizer is not None:
        check_same_tokenizer(tokenizer, policy_tokenizer)
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=1).to(device)
    model.eval()
    return model, tokenizer


# ============================================================================ inputs
def prefix_ids(tokenizer, description: str) -> list[int]:
    """Token ids of the fixed instruction with the rubric filled in (RTT_SPEC §4), after a BOS/CLS if any."""
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"empty rubric description {description!r}: the discriminator reads the criterion text")
    ids = tokenizer(INSTRUCTION.format(rubric=description), add_special_tokens=False)["input_ids"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    return ([start] if start is not None else []) + list(ids)


def encode_pairs(tokenizer, descriptions: list[str], responses: list[list[int]], prefixes: dict | None = None):
    """M (rubric description, response token ids) pairs -> one right-padded batch of discriminator inputs.
    `prefixes` (description -> prefix_ids) is a cache that callers may share across batches.

    Shapes:
        input_ids       (M, L)  long  [instruction + criteria] [response tokens] [pad ...]
        attention_mask  (M, L)  long  1 on real tokens
        starts          (M,)    long  position of the first response token
        lengths         (M,)    long  number of response tokens
    """
    if len(descriptions) != len(responses):
        raise ValueError(f"{len(descriptions)} rubric descriptions but {len(responses)} responses")
    prefixes = {} if prefixes is None else prefixes
    rows, starts = [], []
    for description, response in zip(descriptions, responses):
        if description not in prefixes:
            prefixes[description] = prefix_ids(tokenizer, description)
        rows.append(prefixes[description] + list(response))
        starts.append(len(prefixes[description]))
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows], dtype=torch.long)  # (M, L)
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])      # (M, L)
    lengths = torch.tensor([len(r) for r in responses], dtype=torch.long)        # (M,)
    return input_ids, attention_mask, torch.tensor(starts, dtype=torch.long), lengths


def response_logits(model, input_ids, attention_mask, starts, lengths, width: int) -> torch.Tensor:
    """One forward pass; the token logits of the response positions only, left-aligned to `width` columns.

    Shapes:  input_ids, attention_mask (M, L);  starts, lengths (M,)  ->  (M, width) float, 0 past lengths
    """
    device = next(model.parameters()).device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits[..., 0]  # (M, L)
    cols = torch.arange(width, device=device)                                     # (width,)
    positions = (starts.to(device)[:, None] + cols[None, :]).clamp(max=input_ids.shape[1] - 1)  # (M, width)
    valid = cols[None, :] < lengths.to(device)[:, None]                           # (M, width)
    return logits.gather(1, positions).float().masked_fill(~valid, 0.0)           # (M, width)


# ============================================================================ inference for training
def _check_responses(prompts: list[dict], response_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Validate the relevance-provider inputs; return the number of valid tokens per response (B, G)."""
    if response_ids.dim() != 3 or token_mask.shape != response_ids.shape:
        raise ValueError(f"expected response_ids and token_mask of the same shape (B, G, T), got "
                         f"{tuple(response_ids.shape)} and {tuple(token_mask.shape)}")
    if token_mask.dtype != torch.bool:
        raise ValueError(f"token_mask must be bool, got {token_mask.dtype}")
    if len(prompts) != response_ids.shape[0]:
        raise ValueError(f"{len(prompts)} prompts but response_ids has B = {response_ids.shape[0]}")
    lengths = token_mask.sum(-1)                                                  # (B, G)
    right_padded = torch.arange(token_mask.shape[-1]) < lengths[..., None].cpu()  # (B, G, T)
    if not torch.equal(right_padded, token_mask.cpu()):
        raise ValueError("token_mask must be right-padded: True on a prefix of each row, then False")
    return lengths


# Padded tokens per discriminator forward pass. On a CPU small chunks win: a chunk's activations stay in cache
# (a toy encoder with a 256-wide feed-forward layer scored one RL step's 544 pairs in 128 ms in 4096-token
# chunks, 178 ms in one 16384-token chunk, 1 thread). Raise it on a GPU (train.py --max_batch_tokens).
INFERENCE_BATCH_TOKENS = 4096


@torch.no_grad()
def pair_probabilities(model, tokenizer, descriptions: list[str], responses: list[list[int]],
                       max_tokens_per_batch: int = INFERENCE_BATCH_TOKENS) -> list[torch.Tensor]:
    """sigmoid(logit) for every response token of M (rubric, response) pairs, batched under a token budget.

    Pairs are sorted by length so each chunk pads little; a chunk holds as many pairs as fit in
    `max_tokens_per_batch` padded tokens (at least one). Results come back in the input order.
    Returns M float32 tensors of shapes (len(response_m),).
    """
    if max_tokens_per_batch < 1:
        raise ValueError(f"max_tokens_per_batch must be >= 1, got {max_tokens_per_batch}")
    prefixes = {d: prefix_ids(tokenizer, d) for d in set(descriptions)}
    totals = [len(prefixes[d]) + len(r) for d, r in zip(descriptions, responses)]
    order = sorted(range(len(responses)), key=lambda i: -totals[i])
    out: list[torch.Tensor] = [torch.zeros(0)] * len(responses)
    was_training = model.training
    model.eval()
    start = 0
    while start < len(order):
        per_chunk = max(1, max_tokens_per_batch // totals[order[start]])         # longest first: it sets L
        chunk = order[start:start + per_chunk]
        batch = encode_pairs(tokenizer, [descriptions[i] for i in chunk], [responses[i] for i in chunk], prefixes)
        width = int(batch[3].max())
        probs = torch.sigmoid(response_logits(model, *batch, width=width)).cpu()  # (M_chunk, width)
        for row, i in enumerate(chunk):
            out[i] = probs[row, :len(responses[i])]
        start += per_chunk
    model.train(was_training)
    return out


def relevance(model, tokenizer, prompts: list[dict], response_ids: torch.Tensor, token_mask: torch.Tensor,
              max_tokens_per_batch: int = INFERENCE_BATCH_TOKENS) -> torch.Tensor:
    """The discriminator as a relevance provider: w[b,g,k,t] = σ(logit of token t | rubric k, response (b,g)).

    Every valid (response, rubric) pair is one discriminator sequence; all N·K of them go through the model
    in chunks of at most `max_tokens_per_batch` padded tokens. The response keeps the policy's token ids,
    so `tokenizer` must be the policy's (check with check_same_tokenizer; load_discriminator does).
    A response with no valid token has nothing to weigh and gets an all-zero row.

    Shapes:
        response_ids  (B, G, T)     long   right-padded policy tokens
        token_mask    (B, G, T)     bool   True on generated tokens (end-of-sequence included)
        returns       (B, G, K, T)  float32 in [0, 1]; 0 on padded tokens and padded rubrics
    """
    lengths = _check_responses(prompts, response_ids, token_mask).cpu()           # (B, G)
    k_max, _ = pad_rubrics(prompts)                                               # K
    b_size, g_size, t_size = response_ids.shape
    weights = torch.zeros(b_size, g_size, k_max, t_size, dtype=torch.float32)     # (B, G, K, T)  DEVIATION(3)
    ids = response_ids.cpu()
    index, descriptions, responses = [], [], []
    for b, prompt in enumerate(prompts):
        for g in range(g_size):
            n = int(lengths[b, g])
            if n == 0:
                continue
            response = ids[b, g, :n].tolist()
            for k, rubric in enumerate(prompt["rubrics"]):
                if not str(rubric.get("description", "")).strip():
                    raise ValueError(f"empty rubric description in prompt {prompt.get('id', b)!r}, rubric {k}: "
                                     "the discriminator reads the criterion text")
                index.append((b, g, k))
                descriptions.append(rubric["description"])
                responses.append(response)
    probs = pair_probabilities(model, tokenizer, descriptions, responses, max_tokens_per_batch)
    for (b, g, k), p in zip(index, probs):
        weights[b, g, k, :len(p)] = p
    return weights.to(response_ids.device)                                        # (B, G, K, T)


def uniform_relevance(prompts: list[dict], response_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Ablation: every valid token is fully relevant to every rubric (w = 1). Under intra-sample
    normalisation a constant row contributes 0, so RTT with this provider is exactly GRPO (RTT_SPEC §5).

    Shapes:  prompts (B), response_ids / token_mask (B, G, T)  ->  (B, G, K, T) float32
    """
    _check_responses(prompts, response_ids, token_mask)
    _, rubric_mask = pad_rubrics(prompts)                                         # (B, K)
    rubric_mask = rubric_mask.to(token_mask.device)
    return (rubric_mask[:, None, :, None] & token_mask[:, :, None, :]).float()    # (B, G, K, T)


def random_relevance(prompts: list[dict], response_ids: torch.Tensor, token_mask: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Ablation: w ~ Uniform(0, 1) independently per (response, rubric, token), from `generator`.

    Shapes:  prompts (B), response_ids / token_mask (B, G, T)  ->  (B, G, K, T) float32
    """
    ones = uniform_relevance(prompts, response_ids, token_mask)                   # (B, G, K, T)
    noise = torch.rand(ones.shape, generator=generator)                           # (B, G, K, T)
    return noise.to(ones.device) * ones                                           # (B, G, K, T)


def make_relevance_fn(model=None, tokenizer=None, kind: str = "discriminator", policy_tokenizer=None,
                      max_tokens_per_batch: int = INFERENCE_BATCH_TOKENS, seed: int = 0) -> Callable:
    """A relevance provider fn(prompts, response_ids, token_mask) -> (B, G, K, T) for the training loop.

    kind "discriminator" (needs model + tokenizer; checked against policy_tokenizer when given),
    "uniform", or "random" (its own seeded generator, so runs are reproducible).
    """
    if kind == "uniform":
        return uniform_relevance
    if kind == "random":
        generator = torch.Generator().manual_seed(seed)
        return lambda prompts, ids, mask: random_relevance(prompts, ids, mask, generator=generator)
    if kind != "discriminator":
        raise ValueError(f"unknown relevance kind {kind!r}; choose 'discriminator', 'uniform' or 'random'")
    if model is None or tokenizer is None:
        raise ValueError("a discriminator relevance provider needs a model and its tokenizer")
    if policy_tokenizer is not None:
        check_same_tokenizer(tokenizer, policy_tokenizer)
    return lambda prompts, ids, mask: relevance(model, tokenizer, prompts, ids, mask, max_tokens_per_batch)


# ============================================================================ labels
# An example is one discriminator sequence with its targets:
#   {"description": str, "response_ids": list[int], "labels": list[float] (one per response token),
#    optional "type": rubric type, "violated": bool (does the response fail the rubric?), "side": str}
def make_example(description: str, response_ids: list[int], labels: list[float], **info) -> dict:
    """One training/evaluation example; ValueError for an empty rubric, an empty response or a length mismatch."""
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"empty rubric description {description!r}")
    if len(response_ids) == 0:
        raise ValueError("empty response: an example needs at least one response token to label")
    if len(labels) != len(response_ids):
        raise ValueError(f"labels length mismatch: {len(labels)} labels for {len(response_ids)} response tokens")
    if any(not 0.0 <= float(y) <= 1.0 for y in labels):
        raise ValueError("labels must lie in [0, 1]")
    return {"description": description, "response_ids": list(response_ids), "labels": [float(y) for y in labels],
            **info}


def token_diff_labels(a_ids: list, b_ids: list) -> tuple[list[int], list[int]]:
    """The paper's labels: the tokens that differ between two sequences get 1, the rest 0, on BOTH sides.

    A deleted span has nothing to point at on the shorter side: there we label the token right after the
    gap (e.g. the end-of-sequence token when words were cut from the end), or the last token if the gap
    ends the sequence. Two sequences of equal length are also compared position by position, and that
    reading wins when it labels no more tokens: difflib sees a swap of two neighbours as a deletion plus
    an insertion and would blame the token after the insertion gap instead of the swapped word.

    >>> token_diff_labels([5, 6, 7, 2], [5, 9, 7, 2])          # replacement: both sides
    ([0, 1, 0, 0], [0, 1, 0, 0])
    >>> token_diff_labels([5, 6, 7, 2], [5, 6, 8, 7, 2])       # insertion: the token after the gap
    ([0, 0, 1, 0], [0, 0, 1, 0, 0])
    >>> token_diff_labels([5, 6, 7, 2], [5, 7, 6, 2])          # swap of neighbours: both words
    ([0, 1, 1, 0], [0, 1, 1, 0])
    """
    labels_a, labels_b = [0] * len(a_ids), [0] * len(b_ids)
    matcher = difflib.SequenceMatcher(None, list(a_ids), list(b_ids), autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        for labels, start, stop in ((labels_a, i1, i2), (labels_b, j1, j2)):
            if stop > start:
                labels[start:stop] = [1] * (stop - start)
            elif labels:
                labels[min(start, len(labels) - 1)] = 1
    if len(a_ids) == len(b_ids):
        by_position = [int(a != b) for a, b in zip(a_ids, b_ids)]
        if 2 * sum(by_position) <= sum(labels_a) + sum(labels_b):
            return by_position, list(by_position)
    return labels_a, labels_b


def text_token_spans(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` and each token's character span (a fast tokenizer's offset mapping)."""
    if not text.strip():
        raise ValueError("empty response text: nothing to label")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("character offsets need a fast tokenizer (PreTrainedTokenizerFast)")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]


def spans_to_token_labels(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[float]:
    """A token is relevant (1) when its characters overlap any labelled span [start, end).

    >>> spans_to_token_labels([(0, 4), (5, 7), (8, 11)], [(5, 9)])
    [0.0, 1.0, 1.0]
    """
    return [float(any(start < end_ and s < end for s, end_ in spans)) for start, end in offsets]


def span_example(tokenizer, description: str, response: str, spans: list, add_eos: bool = True, **info) -> dict:
    """Character spans of a response -> a token example (plus the end-of-sequence token, label 0, when
    `add_eos`, because the policy's responses end with it)."""
    ids, offsets = text_token_spans(tokenizer, response)
    for span in spans:
        if len(span) != 2 or not 0 <= span[0] < span[1] <= len(response):
            raise ValueError(f"bad span {span!r} for a response of {len(response)} characters "
                             "(need [start, end) with 0 <= start < end <= len)")
    labels = spans_to_token_labels(offsets, [tuple(s) for s in spans])
    if add_eos and tokenizer.eos_token_id is not None:
        ids, labels = ids + [tokenizer.eos_token_id], labels + [0.0]
    return make_example(description, ids, labels, **info)


def load_span_jsonl(path: str, tokenizer) -> list[dict]:
    """Bring your own labels: one JSON object per line, {"rubric": str, "response": str, "spans": [[s, e], ...]}
    with character offsets into "response"; converted to token labels with the tokenizer's offsets."""
    examples = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                examples.append(span_example(tokenizer, row["rubric"], row["response"], row["spans"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}:{line_no}: {type(error).__name__}: {error} (need fields "
                                 "'rubric', 'response', 'spans')") from error
    return examples


# ---------------------------------------------------------------------------- the greedy baseline (LLM quotes)
GREEDY_PROMPT = (
    "You are given a criterion and a response. Quote the parts of the response that decide whether the "
    "response meets the criterion.\nAnswer with one JSON object and nothing else: "
    '{{"relevance": "all"}} if the whole response is relevant, {{"relevance": "none"}} if nothing is, '
    'or {{"relevance": "partial", "segments": ["exact quote", ...]}} with segments copied verbatim '
    "from the response.\n\nCriterion: {rubric}\n\nResponse:\n{response}\n\nJSON:")


def parse_greedy_answer(answer: str, response: str) -> tuple[list[tuple[int, int]] | None, int]:
    """Strictly parse a quoting answer -> (character spans or None when malformed, number of quotes not found).

    Every occurrence of a quote is labelled; a quote absent from the response is dropped and counted,
    never fuzzily matched.
    """
    try:
        parsed = json.loads(answer.strip())
    except json.JSONDecodeError:
        return None, 0
    if not isinstance(parsed, dict) or parsed.get("relevance") not in ("all", "none", "partial"):
        return None, 0
    if parsed["relevance"] == "all":
        return [(0, len(response))], 0
    if parsed["relevance"] == "none":
        return [], 0
    segments = parsed.get("segments")
    if not isinstance(segments, list) or not all(isinstance(s, str) and s for s in segments):
        return None, 0
    spans, missing = [], 0
    for quote in segments:
        start = response.find(quote)
        missing += start < 0
        while start >= 0:
            spans.append((start, start + len(quote)))
            start = response.find(quote, start + 1)
    return spans, missing


def greedy_labels(answers: list[str], responses: list[str], tokenizer) -> tuple[list[list[float] | None], dict]:
    """Quoting answers -> token labels of each response text (None where the answer was malformed), plus
    counts {"answers", "malformed", "quotes_not_found"}."""
    if len(answers) != len(responses):
        raise ValueError(f"{len(answers)} answers for {len(responses)} responses")
    labels, stats = [], {"answers": len(answers), "malformed": 0, "quotes_not_found": 0}
    for answer, response in zip(answers, responses):
        spans, missing = parse_greedy_answer(answer, response)
        stats["quotes_not_found"] += missing
        if spans is None:
            stats["malformed"] += 1
            labels.append(None)
            continue
        labels.append(spans_to_token_labels(text_token_spans(tokenizer, response)[1], spans))
    return labels, stats


def llm_quotes(generate_fn: Callable[[list[str]], list[str]], descriptions: list[str], responses: list[str]):
    """Ask an LLM (generate_fn: list of prompts -> list of completions) for the greedy baseline's quotes."""
    return generate_fn([GREEDY_PROMPT.format(rubric=d, response=r) for d, r in zip(descriptions, responses)])


# ---------------------------------------------------------------------------- the LLM editor (minimal pairs)
EDIT_PROMPT = (
    "Rewrite the response with the smallest possible change so that it NO LONGER meets the criterion "
    "below, while everything else about it stays the same (change as few words as you can; keep every "
    "other requirement it meets).\nAnswer with one JSON object and nothing else: "
    '{{"modified": "the changed response"}}.\n\nCriterion: {rubric}\n\nResponse:\n{response}\n\nJSON:')


def parse_edit(answer: str) -> str | None:
    """The modified response from {"modified": str}, or None unless the answer is exactly that JSON object."""
    try:
        parsed = json.loads(answer.strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or set(parsed) != {"modified"} or not isinstance(parsed["modified"], str):
        return None
    return parsed["modified"] if parsed["modified"].strip() else None


def llm_minimal_pairs(generate_fn: Callable[[list[str]], list[str]], judge: Callable[[dict, str], bool],
                      items: list[tuple[dict, str, list[dict]]], tokenizer) -> tuple[list[dict], dict]:
    """Minimal pairs from an LLM editor (the paper's recipe) for real data.

    items: (rubric, positive response text, the prompt's other rubrics). The LLM proposes a minimal edit
    that breaks `rubric`; the judge (judge(rubric, text) -> bool) must say the positive passes, the edit
    fails, and every other rubric keeps its verdict — otherwise the pair is rejected and counted.
    The token diff labels both sides (with the end-of-sequence token appended, as the policy emits it).
    """
    answers = generate_fn([EDIT_PROMPT.format(rubric=r["description"], response=text) for r, text, _ in items])
    examples = []
    stats = {"asked": len(items), "malformed": 0, "unchanged": 0, "not_flipped": 0, "side_effects": 0, "kept": 0}
    for (rubric, positive, others), answer in zip(items, answers):
        negative = parse_edit(answer)
        reason = ("malformed" if negative is None else "unchanged" if negative.strip() == positive.strip()
                  else "not_flipped" if not judge(rubric, positive) or judge(rubric, negative)
                  else "side_effects" if any(judge(o, positive) != judge(o, negative) for o in others) else "kept")
        stats[reason] += 1
        if reason != "kept":
            continue
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        pos_ids = text_token_spans(tokenizer, positive)[0] + eos
        neg_ids = text_token_spans(tokenizer, negative)[0] + eos
        pos_labels, neg_labels = token_diff_labels(pos_ids, neg_ids)
        examples.append(make_example(rubric["description"], pos_ids, pos_labels, type=rubric.get("type"),
                                     violated=False, side="positive"))
        examples.append(make_example(rubric["description"], neg_ids, neg_labels, type=rubric.get("type"),
                                     violated=True, side="negative"))
    return examples, stats


def hf_generate_fn(model, tokenizer, max_new_tokens: int = 256) -> Callable[[list[str]], list[str]]:
    """Wrap any local Hugging Face causal LM as generate_fn(prompts) -> completions (greedy decoding,
    the chat template when the tokenizer has one)."""
    def generate(prompts: list[str]) -> list[str]:
        completions = []
        for prompt in prompts:
            if getattr(tokenizer, "chat_template", None):
                ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                    add_generation_prompt=True, return_tensors="pt")
                ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
            else:
                ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            ids = ids.to(next(model.parameters()).device)
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id)
            completions.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return completions
    return generate


# ============================================================================ training
def bce_on_response(logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over response tokens only (instruction, criteria, padding ignored).

    L = − mean_{m, t < len_m} [ y·log σ(z) + (1 − y)·log(1 − σ(z)) ]     z = logits, y = labels

    Shapes:  logits, labels (M, width) float;  lengths (M,) long  ->  () scalar
    """
    valid = torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths.to(logits.device)[:, None]  # (M, width)
    return F.binary_cross_entropy_with_logits(logits[valid], labels.to(logits.device)[valid])


def label_matrix(examples: list[dict], width: int) -> torch.Tensor:
    """Labels of M examples left-aligned into (M, width), 0 past each response's length."""
    labels = torch.zeros(len(examples), width)                                    # (M, width)
    for i, example in enumerate(examples):
        labels[i, :len(example["labels"])] = torch.tensor(example["labels"])
    return labels


def train_discriminator(model, tokenizer, examples: list[dict], steps: int = 1000, batch_size: int = 64,
                        lr: float = 3e-3, weight_decay: float = 0.01, seed: int = 0, progress: bool = True) -> list[float]:
    """AdamW on the response-token BCE, batches drawn uniformly with a seeded generator; the lr warms up
    linearly over the first 5% of the steps, then decays on a cosine to 5%. Returns the loss of every step."""
    if not examples:
        raise ValueError("no training examples")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * (
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))))
    model.train()
    losses, prefixes = [], {}
    bar = tqdm(range(steps), desc="discriminator", disable=not progress, mininterval=2.0)
    for _ in bar:
        picks = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
        batch = [examples[i] for i in picks]
        input_ids, attention_mask, starts, lengths = encode_pairs(
            tokenizer, [e["description"] for e in batch], [e["response_ids"] for e in batch], prefixes)
        width = int(lengths.max())
        logits = response_logits(model, input_ids, attention_mask, starts, lengths, width)  # (M, width)
        loss = bce_on_response(logits, label_matrix(batch, width), lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", refresh=False)
    model.eval()
    return losses


# ============================================================================ metrics
def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve = P(score of a random relevant token > score of a random irrelevant one),
    ties counting 1/2 (Mann–Whitney U with average ranks). NaN when one class is absent.

    >>> auroc(torch.tensor([0.1, 0.4, 0.4, 0.9]), torch.tensor([0, 0, 1, 1]))
    0.875
    """
    scores, labels = scores.flatten().double(), labels.flatten().bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    sorted_scores, order = torch.sort(scores)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()                                       # 1-based rank of each tie block's end
    average_rank = last - (counts.double() - 1) / 2                               # mean rank inside each tie block
    ranks = torch.empty_like(scores)
    ranks[order] = average_rank[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def token_metrics(probs: list[torch.Tensor], labels: list[list[float]], violated: list[bool],
                  threshold: float = 0.5) -> dict:
    """Token precision / recall / F1 at `threshold`, AUROC, and top-1 accuracy on violated rubrics.

    top1_violated: over examples whose response VIOLATES the rubric and has at least one relevant token,
    the share whose highest-scored token is relevant (the token RTT would penalise most).
    """
    if not probs:
        return {"examples": 0}
    scores = torch.cat([p.float() for p in probs])
    truth = torch.cat([torch.tensor(y) for y in labels]) > 0.5
    predicted = scores >= threshold
    tp = int((predicted & truth).sum())
    precision = tp / max(int(predicted.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    hits = [float(y[int(torch.argmax(p))]) > 0.5 for p, y, v in zip(probs, labels, violated) if v and max(y) > 0.5]
    return {"examples": len(probs), "tokens": int(truth.numel()), "relevant_share": float(truth.float().mean()),
            "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0,
            "auroc": auroc(scores, truth),
            "top1_violated": sum(hits) / len(hits) if hits else float("nan")}


def predict_examples(model, tokenizer, examples: list[dict],
                     max_tokens_per_batch: int = INFERENCE_BATCH_TOKENS) -> list[torch.Tensor]:
    """The discriminator's relevance for every example's response tokens."""
    return pair_probabilities(model, tokenizer, [e["description"] for e in examples],
                              [e["response_ids"] for e in examples], max_tokens_per_batch)


# ============================================================================ Rubric World (the toy task)
REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
# DEVIATION(1): a tiny encoder trained on programmatic minimal pairs stands in for a fine-tuned LLM.
# Matching a rubric's word to the same word in the response (include, exclude, order) needs the long run: on
# identifiable test labels F1 0.75 after 1000 steps at lr 3e-3, 0.92 with these settings (lr 2e-3 was faster on
# one thread and much worse on two: 0.94 vs 0.79). A 256-wide feed-forward layer reached 0.98 but made
# relevance inference 1.3x slower (README, Speed).
TOY_SETTINGS = dict(backbone="bidirectional", hidden=64, layers=2, heads=4, intermediate=128, steps=3000,
                    batch_size=64, lr=1e-3, seed=0, data_seed=0)

# Which diff labels can be recovered from ONE response (RTT_SPEC §4 trap 2; the table in data.py), by
# (rubric type, side). The others point at a random word (the filler that replaced a required word, the
# word a forbidden one replaced) or at one of several equivalent positions, so they cap the F1 of any model.
IDENTIFIABLE = {("starts_with", "positive"), ("starts_with", "negative"), ("ends_with", "positive"),
                ("ends_with", "negative"), ("include", "positive"), ("exclude", "negative"),
                ("lowercase", "negative"), ("order", "positive"), ("order", "negative")}


def default_cache_dir() -> str:
    """cache/toy/discriminator under the repository root, or $RTT_CACHE/toy/discriminator when RTT_CACHE is set."""
    return os.path.join(os.environ.get("RTT_CACHE") or os.path.join(REPO_ROOT, "cache"), "toy", "discriminator")


def rubric_world_examples(prompts: list[dict], tokenizer, seed: int = 0) -> list[dict]:
    """Minimal pairs of Rubric World (data.minimal_pairs) as token examples, both sides labelled.

    Two recipes per prompt: from a response meeting every rubric (the paper's), and from the imperfect
    teacher's response, whose pairs include responses that fail several rubrics at once, as RL samples do.
    Each example carries its rubric type, side ("positive" meets the rubric, "negative" violates it), recipe,
    whether its labels are identifiable from the response alone, and its words and rubric.
    """
    import data                                        # Rubric World only; the rest of this file stands alone
    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    examples = []
    for recipe, from_teacher in (("satisfying", False), ("teacher", True)):
        for pair in data.minimal_pairs(prompts, rng, from_teacher=from_teacher):
            rubric = pair["rubric"]
            for side in ("positive", "negative"):
                words = pair[side]
                ids = tokenizer.convert_tokens_to_ids(words) + [eos]
                examples.append(make_example(rubric["description"], ids, pair[f"{side}_labels"], type=rubric["type"],
                                             violated=side == "negative", side=side, recipe=recipe, words=words,
                                             rubric=rubric, identifiable=(rubric["type"], side) in IDENTIFIABLE))
    return examples


def rubric_world_quote(rubric: dict, words: list[str]) -> str:
    """The greedy baseline's answer on Rubric World, written by a rule instead of an LLM (DEVIATION(2)):
    it quotes the words the rubric names, the capitalised words ("lowercase") or the ';' ("parts"), the whole
    response for "length", and answers "none" when nothing it would quote is present."""
    if rubric["type"] == "length":                     # DEVIATION(2): a rule writes what an LLM would quote
        return json.dumps({"relevance": "all"})
    named = [rubric["args"][key] for key in ("word", "first", "second") if key in rubric["args"]]
    if rubric["type"] == "lowercase":
        named = [w for w in words if w[:1].isupper()]
    elif rubric["type"] == "parts":
        named = [";"]
    quotes = sorted({w for w in named if w in words})
    return json.dumps({"relevance": "partial", "segments": quotes} if quotes else {"relevance": "none"})


def greedy_predictions(examples: list[dict], tokenizer) -> tuple[list[torch.Tensor], dict]:
    """Greedy-baseline labels as 0/1 scores for every example (a dropped, malformed answer scores 0 everywhere;
    the end-of-sequence token is never quoted), plus the parsing counts."""
    answers = [rubric_world_quote(e["rubric"], e["words"]) for e in examples]
    labels, stats = greedy_labels(answers, [" ".join(e["words"]) for e in examples], tokenizer)
    scores = []
    for quoted, example in zip(labels, examples):
        row = torch.zeros(len(example["response_ids"]))                          # (T_m,)
        row[:len(quoted or [])] = torch.tensor(quoted or [], dtype=torch.float32)
        scores.append(row)
    return scores, stats


def data_fingerprint(examples: list[dict]) -> str:
    """A short hash of examples' inputs and labels: a cached model trained on other data is not reused."""
    rows = [(e["description"], e["response_ids"], e["labels"]) for e in examples]
    return hashlib.sha1(json.dumps(rows).encode()).hexdigest()[:16]


def load_or_train_toy_discriminator(device: str = "cpu", cache_dir: str | None = None, rebuild: bool = False,
                                    settings: dict | None = None):
    """The toy discriminator (DEVIATION(1)) and the policy's tokenizer (data.build_tokenizer()).

    Loaded from `cache_dir` (default_cache_dir()) when it was trained with the same settings, instruction,
    tokenizer and data; otherwise trained on the minimal pairs of Rubric World's train split and saved there.
    `settings` overrides TOY_SETTINGS entries (e.g. {"steps": 20} in tests).
    """
    import data
    unknown = sorted(set(settings or {}) - set(TOY_SETTINGS))
    if unknown:
        raise ValueError(f"unknown discriminator settings {unknown}; known: {sorted(TOY_SETTINGS)}")
    wanted = {**TOY_SETTINGS, **(settings or {})}
    cache_dir = cache_dir or default_cache_dir()
    tokenizer = data.build_tokenizer()
    prompts = data.make_splits(seed=wanted["data_seed"])["train"]
    fingerprint = data_fingerprint(rubric_world_examples(prompts[:20], tokenizer, seed=wanted["seed"]))
    meta_path = os.path.join(cache_dir, META_FILE)
    if not rebuild and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        same = (meta.get("settings") == wanted and meta.get("instruction") == INSTRUCTION
                and meta.get("data") == fingerprint)
        if same and vocab_fingerprint(AutoTokenizer.from_pretrained(cache_dir)) == vocab_fingerprint(tokenizer):
            return load_discriminator(cache_dir, tokenizer, device)
    examples = rubric_world_examples(prompts, tokenizer, seed=wanted["seed"])
    model = build_toy_discriminator(tokenizer, backbone=wanted["backbone"], hidden=wanted["hidden"],
                                    layers=wanted["layers"], heads=wanted["heads"],
                                    intermediate=wanted["intermediate"], seed=wanted["seed"])
    start = time.time()
    losses = train_discriminator(model, tokenizer, examples, steps=wanted["steps"], batch_size=wanted["batch_size"],
                                 lr=wanted["lr"], seed=wanted["seed"])
    wall = time.time() - start
    final_loss = sum(losses[-50:]) / len(losses[-50:])
    save_discriminator(model, tokenizer, cache_dir, {"settings": wanted, "data": fingerprint, "examples": len(examples),
                                                     "final_loss": final_loss, "wall_s": wall,
                                                     "threads": torch.get_num_threads()})
    print(f"toy discriminator: {wanted['backbone']}, {wanted['steps']} steps on {len(examples)} minimal-pair "
          f"examples, final loss {final_loss:.3f}, {wall:.0f} s, {torch.get_num_threads()} threads -> {cache_dir}")
    return model.to(device).eval(), tokenizer


def evaluate(examples: list[dict], predictions: dict[str, list[torch.Tensor]]) -> dict:
    """token_metrics of every provider on: all examples, the identifiable / not identifiable ones, each rubric
    type, and each (type, side). Returns {group: {provider: metrics}}."""
    groups: dict[str, list[int]] = {"all": list(range(len(examples))), "identifiable": [], "not_identifiable": []}
    for i, example in enumerate(examples):
        groups["identifiable" if example["identifiable"] else "not_identifiable"].append(i)
        groups.setdefault(f"type/{example['type']}", []).append(i)
        groups.setdefault(f"type_side/{example['type']}/{example['side']}", []).append(i)
    return {group: {name: token_metrics([probs[i] for i in idx], [examples[i]["labels"] for i in idx],
                                        [examples[i]["violated"] for i in idx]) for name, probs in predictions.items()}
            for group, idx in sorted(groups.items(), key=lambda kv: (kv[0].count("/"), kv[0]))}


def rubric_world_report(model, tokenizer, baselines: bool = True, seed: int = 0) -> dict:
    """The discriminator (and the uniform, random and greedy baselines) on the held-out test prompts and on
    the rubric combinations held out of training: {split: {group: {provider: metrics}}}."""
    import data
    splits = data.make_splits(seed=0)
    report = {}
    for offset, name in enumerate(("test", "test_unseen_combos")):
        examples = rubric_world_examples(splits[name], tokenizer, seed=seed + 1 + offset)
        predictions = {"discriminator": predict_examples(model, tokenizer, examples)}
        if baselines:
            generator = torch.Generator().manual_seed(seed)
            predictions["uniform"] = [torch.ones(len(e["response_ids"])) for e in examples]
            predictions["random"] = [torch.rand(len(e["response_ids"]), generator=generator) for e in examples]
            predictions["greedy"], greedy_stats = greedy_predictions(examples, tokenizer)
        report[name] = evaluate(examples, predictions)
        if baselines:
            report[name]["greedy_parsing"] = greedy_stats
    return report


def summary_table(split_report: dict) -> str:
    """One line per group (all, identifiable or not, each rubric type): F1 / AUROC / top-1-violated of every
    provider; the per-(type, side) groups stay in the JSON."""
    providers = list(split_report["all"])
    lines = [f"{'group':34s}" + "".join(f"{p:>26s}" for p in providers),
             f"{'':34s}" + "".join(f"{'F1   AUROC  top1':>26s}" for _ in providers)]
    for group, by_provider in split_report.items():
        if group == "greedy_parsing" or group.startswith("type_side/"):
            continue
        cells = "".join(f"{m['f1']:14.3f}{m['auroc']:6.3f}{m['top1_violated']:6.3f}" for m in by_provider.values())
        lines.append(f"{group:28s}{by_provider[providers[0]]['examples']:6d}{cells}")
    return "\n".join(lines)


# ============================================================================ heat map
def heatmap_example(model, tokenizer, seed: int = 0) -> dict:
    """One held-out prompt with a teacher response that breaks at least one rubric, and its relevance.

    Returns {"prompt", "tokens" (T), "rubrics" (K descriptions), "verdicts" (K bools), "weights" (K, T),
    "oracle" (K, T): the oracle's minimal-modification labels}.
    """
    import data
    rng = random.Random(seed)
    for prompt in data.make_splits(seed=0)["test"]:
        words = data.teacher_response(prompt, rng)
        verdicts = [data.passes(r, words) for r in prompt["rubrics"]]
        if not all(verdicts):
            break
    ids = torch.tensor([[tokenizer.convert_tokens_to_ids(words) + [tokenizer.eos_token_id]]])  # (1, 1, T)
    mask = torch.ones_like(ids, dtype=torch.bool)                                 # (1, 1, T)
    return {"prompt": prompt["prompt"], "tokens": words + [tokenizer.eos_token], "verdicts": verdicts,
            "rubrics": [r["description"] for r in prompt["rubrics"]],
            "weights": relevance(model, tokenizer, [prompt], ids, mask)[0, 0],    # (K, T)
            "oracle": data.oracle_relevance([prompt], ids, mask, tokenizer)[0, 0]}  # (K, T)


def _rgb(weight: float) -> tuple[int, int, int]:
    """White (w = 0) to red (w = 1)."""
    return 255, int(255 * (1 - 0.8 * weight)), int(255 * (1 - 0.85 * weight))


def heatmap_terminal(example: dict) -> str:
    """The heat map in 24-bit terminal colours: one line per rubric, tokens shaded by w."""
    lines = []
    for k, (rubric, verdict) in enumerate(zip(example["rubrics"], example["verdicts"])):
        cells = [f"\x1b[48;2;{r};{g};{b}m\x1b[30m{token}\x1b[0m"
                 for token, (r, g, b) in zip(example["tokens"], (_rgb(float(w)) for w in example["weights"][k]))]
        lines.append(f"{'PASS' if verdict else 'FAIL'} {rubric}\n     " + " ".join(cells))
    return "\n".join(lines)


def heatmap_html(example: dict) -> str:
    """The heat map as a self-contained HTML page: tokens shaded by w, oracle-relevant tokens underlined."""
    rows = []
    for k, (rubric, verdict) in enumerate(zip(example["rubrics"], example["verdicts"])):
        spans = []
        for t, token in enumerate(example["tokens"]):
            w, r_, g_, b_ = float(example["weights"][k, t]), *_rgb(float(example["weights"][k, t]))
            underline = "text-decoration:underline 2px" if example["oracle"][k, t] > 0.5 else ""
            spans.append(f'<span title="w = {w:.2f}" style="background:rgb({r_},{g_},{b_});{underline}">'
                         f"{html.escape(token)}</span>")
        rows.append(f"<p><b>{'PASS' if verdict else 'FAIL'}</b> {html.escape(rubric)}<br>{' '.join(spans)}</p>")
    return ("<!doctype html><meta charset='utf-8'><title>RTT token relevance</title>"
            "<body style='font-family:monospace;max-width:70em'>"
            f"<p>{html.escape(example['prompt'])}</p><p>shade = discriminator relevance w; "
            "underlined = relevant by the oracle's minimal modification</p>" + "".join(rows) + "</body>")


def save_heatmap_png(example: dict, path: str) -> None:
    """Rows = rubrics (with their verdict), columns = response tokens, colour = w; a dot marks the oracle's labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    weights, oracle = example["weights"].numpy(), example["oracle"].numpy()       # (K, T), (K, T)
    fig, ax = plt.subplots(figsize=(0.45 * weights.shape[1] + 4, 0.5 * weights.shape[0] + 2))
    image = ax.imshow(weights, cmap="Reds", vmin=0.0, vmax=1.0, aspect="auto")
    rows, cols = oracle.nonzero()
    ax.scatter(cols, rows, s=12, c="black", label="oracle: relevant")
    ax.set_xticks(range(weights.shape[1]), example["tokens"], rotation=90)
    ax.set_yticks(range(weights.shape[0]), [f"{'PASS' if v else 'FAIL'}  {r}" for r, v in
                                            zip(example["rubrics"], example["verdicts"])], fontsize=8)
    fig.colorbar(image, ax=ax, label="relevance w")
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, 1.15), fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def json_safe(value):
    """NaN (e.g. top-1 accuracy of a group without violated examples) becomes null, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_atomic(path: str, text: str) -> None:
    """Write a text file via a temporary file and a rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# ============================================================================ command line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train (or load) the toy discriminator and measure it on Rubric World.")
    parser.add_argument("--json", help="write every metric to this JSON file")
    parser.add_argument("--heatmap", help="save a per-rubric heat map of one test response (PNG, plus .html)")
    parser.add_argument("--rebuild", action="store_true", help="retrain even if a cached model exists")
    parser.add_argument("--compare-backbones", action="store_true",
                        help="also train the other backbone (causal vs bidirectional) and compare per rubric type")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    model, tokenizer = load_or_train_toy_discriminator(device=args.device, rebuild=args.rebuild)
    report = {"settings": TOY_SETTINGS, "instruction": INSTRUCTION, **rubric_world_report(model, tokenizer)}
    for split in ("test", "test_unseen_combos"):
        print(f"\n{split}  (F1 at 0.5 / AUROC / top-1 token of a violated rubric is relevant)\n"
              + summary_table(report[split]))
    if args.compare_backbones:
        other = "causal" if TOY_SETTINGS["backbone"] == "bidirectional" else "bidirectional"
        other_model, _ = load_or_train_toy_discriminator(args.device, default_cache_dir() + f"_{other}",
                                                         args.rebuild, {"backbone": other})
        report["backbones"] = {TOY_SETTINGS["backbone"]: {s: {g: m["discriminator"] for g, m in report[s].items()
                                                              if g != "greedy_parsing"} for s in ("test", "test_unseen_combos")},
                               other: {s: {g: m["discriminator"] for g, m in r.items()} for s, r in
                                       rubric_world_report(other_model, tokenizer, baselines=False).items()}}
        for split in ("test", "test_unseen_combos"):
            print(f"\n{split}: {other} backbone\n" + summary_table(
                {g: {"discriminator": m} for g, m in report["backbones"][other][split].items()}))
    example = heatmap_example(model, tokenizer)
    print("\n" + example["prompt"] + "\n" + heatmap_terminal(example))
    if args.json:
        write_atomic(args.json, json.dumps(json_safe(report), indent=1, allow_nan=False))
        print(f"metrics -> {args.json}")
    if args.heatmap:
        save_heatmap_png(example, args.heatmap)
        write_atomic(os.path.splitext(args.heatmap)[0] + ".html", heatmap_html(example))
        print(f"heat map -> {args.heatmap} and {os.path.splitext(args.heatmap)[0]}.html")


if __name__ == "__main__":
    main()
