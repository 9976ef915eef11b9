"""
policies/rollout.py — a causal LM as a policy π_θ: encode prompts, sample G responses under a memory budget,
score log π.

Paper:    paper §3 (GRPO rollouts; the PPO ratio needs log π_θ(o_t | q, o_<t)); METHOD.md §3 steps 1 and 9.
Input:    prompt dicts {"prompt": str, ...}, any transformers causal LM and its tokenizer (policies/loading.py loads
          them)
Output:   response_ids (B, G, T) long, right-padded; token_mask (B, G, T) bool, True up to and including EOS;
          per-token log-probabilities (N, T) or (B, G, T) float32, 0 on padding; response texts

Prompts.  encode_prompts() uses the tokenizer's chat template when it has one (real instruct models);
          the toy tokenizer has none, so a toy prompt is <bos> + prompt words + <sep>.
Sampling. A KV-cached loop over the model's forward: prompts are left-padded (position ids count real
          tokens only), every sequence stops at its own EOS and is padded after it. The cache is the library's
          StaticCache, sized prompt + max_new_tokens and written in place (a sliding-window model keeps the
          growing cache), and the attention mask is built once and sliced.
          Temperature, top-k and top-p as in HF generate, with top-p and the draw on top-k's k candidates;
          `generator` makes it reproducible. Special tokens other than EOS (pad,
          bos, unk, sep) are never sampled, and response_logprobs() scores tokens under that same
          tempered distribution (softmax(z / τ) over the allowed tokens), so log π is the sampler's own.
Memory.   generate() splits the prompts so that one chunk holds at most `max_batch_tokens` sequence
          positions (rows × (prompt + max_new_tokens)): the KV cache of a 4B model at G = 8 and 4096 new
          tokens does not fit in one batch. microbatches() slices the N rows the same way for the log-prob
          forward and backward (gradient accumulation).

Demo:     python -m policies.loading    (the warm-start toy policy samples a few responses and scores them)
"""

import math

import torch
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

# Dimension legend (identical in every file):
#   B prompts in the batch        G responses per prompt (group)     N = B*G responses, flattened
#   K rubrics per prompt          T response tokens, right-padded    V vocabulary size
#   P prompt tokens, left-padded

UNLIMITED = 1 << 62                           # a memory budget that never splits a batch


# ----------------------------------------------------------------------------- prompts and padding
def encode_prompts(tokenizer, prompts: list[dict]) -> list[list[int]]:
    """Token ids of each prompt as the policy sees it: chat template if the tokenizer has one, else
    <bos> prompt words <sep> (the toy format)."""
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=True,
                                              add_generation_prompt=True, return_dict=False) for p in prompts]
    encoded = tokenizer([p["prompt"] for p in prompts], add_special_tokens=False)["input_ids"]
    return [[tokenizer.bos_token_id] + ids + [tokenizer.sep_token_id] for ids in encoded]


def left_pad(sequences: list[list[int]], pad_id: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ids (N, P) long and attention_mask (N, P) bool."""
    if not sequences or min(len(s) for s in sequences) == 0:
        raise ValueError("every prompt needs at least one token")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)          # (N, P)
    attention_mask = torch.zeros(len(sequences), width, dtype=torch.bool)        # (N, P)
    for i, s in enumerate(sequences):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, width - len(s):] = True
    return ids.to(device), attention_mask.to(device)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)                    # (N, L)


def suppressed_token_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """(V,) bool: special tokens the policy may never emit (every special token except EOS)."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for token_id in tokenizer.all_special_ids:
        if token_id != tokenizer.eos_token_id and token_id < vocab_size:
            mask[token_id] = True
    return mask


# ----------------------------------------------------------------------------- sampling
def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                greedy: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from next-token logits (N, V) -> (N,), with HF generate's warpers.

    >>> sample_next(torch.tensor([[0.0, 3.0, 1.0]]), greedy=True)
    tensor([1])
    """
    if greedy:
        return logits.argmax(dim=-1)                                              # (N,)
    candidate_logits, candidate_ids = warped_candidates(logits, temperature, top_k, top_p)  # (N, C), (N, C)
    choice = torch.multinomial(candidate_logits.softmax(dim=-1), 1, generator=generator)  # (N, 1) among the C
    return candidate_ids.gather(-1, choice).squeeze(-1)                           # (N,)


def warped_candidates(logits: torch.Tensor, temperature: float, top_k: int, top_p: float):
    """Temperature, top-k, top-p (HF generate's warpers) -> the tokens one may draw: logits (N, C) and ids (N, C),
    -inf where top-p cut. C = k with top-k on, else C = V in vocabulary order.

    Speed: with top-k on, top-p and the draw work on torch.topk's k values, already sorted, instead of sorting and
    sampling all V = 49,152 logits of a row (SmolLM2: 28 -> 2 ms per decoding step of 8 rows, 1 thread). The
    distribution is HF's except on an exact tie with the k-th logit, where HF keeps every tied token and this keeps
    k (tests/test_rollout.py compares it with transformers' warpers). Without top-k the draw is over V in
    vocabulary order, and a seed gives the tokens it gave before top-k had its own path.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature}")
    scaled = logits.float() / temperature                                         # (N, V)
    if 0 < top_k < scaled.shape[-1]:
        top_logits, top_ids = scaled.topk(top_k, dim=-1)                          # (N, k), sorted descending
        return top_logits.masked_fill(nucleus_drop(top_logits, top_p), -math.inf), top_ids
    vocabulary = torch.arange(scaled.shape[-1], device=scaled.device).expand_as(scaled)  # (N, V)
    if top_p >= 1.0:
        return scaled, vocabulary
    sorted_logits, order = scaled.sort(dim=-1, descending=True)                  # (N, V)
    drop_sorted = nucleus_drop(sorted_logits, top_p)                             # (N, V) in sorted order
    return scaled.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -math.inf), vocabulary


def nucleus_drop(sorted_logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Top-p on logits sorted in descending order (N, C) -> (N, C) bool, True beyond the smallest prefix whose
    probability reaches top_p (the token that crosses p is kept, as in HF). top_p >= 1 drops nothing."""
    if top_p >= 1.0:                                      # cumulative sums may round to 1 before the tail
        return torch.zeros_like(sorted_logits, dtype=torch.bool)
    probs = sorted_logits.softmax(dim=-1)                                         # (N, C)
    return (probs.cumsum(dim=-1) - probs) >= top_p


def prompts_per_chunk(prompt_lengths: list[int], group_size: int, max_new_tokens: int, max_batch_tokens: int) -> int:
    """How many prompts (each with its G rows) fit in max_batch_tokens sequence positions; at least 1.

    >>> prompts_per_chunk([10, 30, 20], group_size=4, max_new_tokens=70, max_batch_tokens=1000)
    2
    """
    row_tokens = max(prompt_lengths) + max_new_tokens                             # left-padded width + T
    return max(1, max_batch_tokens // (group_size * row_tokens))


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], group_size: int, max_new_tokens: int,
             max_batch_tokens: int = UNLIMITED, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             greedy: bool = False, generator: torch.Generator | None = None,
             progress: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Sample G responses per prompt, in chunks of prompts that fit `max_batch_tokens`; one T for all.

    Shapes:
        prompt_ids   B lists of token ids (from encode_prompts)
        returns      response_ids (B, G, T) long, pad after EOS;  token_mask (B, G, T) bool, True up to and
                     including EOS (all True for a response cut at max_new_tokens); T <= max_new_tokens
    `generator` must live on the model's device. With one generator the random stream is consumed chunk
    after chunk, so a different budget gives different (equally valid) samples. `progress`: a tqdm bar's label.
    """
    if group_size < 1 or max_new_tokens < 1 or max_batch_tokens < 1:
        raise ValueError(f"group_size, max_new_tokens and max_batch_tokens must be >= 1, got {group_size}, "
                         f"{max_new_tokens}, {max_batch_tokens}")
    step = prompts_per_chunk([len(p) for p in prompt_ids], group_size, max_new_tokens, max_batch_tokens)
    starts = tqdm(range(0, len(prompt_ids), step), desc=progress, unit="chunk", disable=not progress)
    chunks = [_generate_batch(model, tokenizer, prompt_ids[i:i + step], group_size, max_new_tokens, temperature,
                              top_p, top_k, greedy, generator) for i in starts]
    width = max(ids.shape[-1] for ids, _ in chunks)                              # T
    pad = torch.nn.functional.pad
    response_ids = torch.cat([pad(ids, (0, width - ids.shape[-1]), value=tokenizer.pad_token_id)
                              for ids, _ in chunks])                              # (B, G, T)
    token_mask = torch.cat([pad(mask, (0, width - mask.shape[-1]), value=False) for _, mask in chunks])  # (B, G, T)
    return response_ids, token_mask


def _generate_batch(model, tokenizer, prompt_ids, group_size, max_new_tokens, temperature, top_p, top_k, greedy,
                    generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of B·G rows, KV-cached; each row stops at its own EOS. -> (B, G, T) ids and mask.

    The prompt is read once per PROMPT (B rows) and its KV cache repeated for the G responses: with IFEval's
    ~370-token chat prompts the prefill is most of the work, and G identical copies of it would be wasted.
    """
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    eos_id = tokenizer.eos_token_id
    input_ids, attention_mask = left_pad(prompt_ids, pad_id, device)             # (B, P), (B, P)
    position_ids = positions(attention_mask)                                      # (B, P)
    out = model(input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=position_ids,
                use_cache=True, logits_to_keep=1)                                 # the LM head on the last position
    prompt_width = input_ids.shape[1]                                             # P
    cache = repeated_cache(model, out.past_key_values, group_size, prompt_width + max_new_tokens)
    logits = out.logits[:, -1].repeat_interleave(group_size, dim=0)               # (N, V)
    n_rows = len(prompt_ids) * group_size
    future = torch.ones(n_rows, max_new_tokens, dtype=torch.bool, device=device)  # (N, T): sliced in step by step
    attention_mask = torch.cat([attention_mask.repeat_interleave(group_size, dim=0), future], dim=1).long()  # (N, P+T)
    position_ids = position_ids[:, -1:].repeat_interleave(group_size, dim=0)      # (N, 1)
    suppress = suppressed_token_mask(tokenizer, model.config.vocab_size).to(device)  # (V,)
    response_ids = torch.full((n_rows, max_new_tokens), pad_id, dtype=torch.long, device=device)  # (N, T)
    token_mask = torch.zeros(n_rows, max_new_tokens, dtype=torch.bool, device=device)           # (N, T)
    finished = torch.zeros(n_rows, dtype=torch.bool, device=device)                              # (N,)
    n_steps = 0
    for t in range(max_new_tokens):
        next_ids = sample_next(logits.float().masked_fill(suppress, -math.inf), temperature, top_k, top_p, greedy,
                               generator)                                         # (N,)
        response_ids[:, t] = next_ids.masked_fill(finished, pad_id)
        token_mask[:, t] = ~finished
        finished = finished | (next_ids == eos_id)
        n_steps = t + 1
        if bool(finished.all()) or t + 1 == max_new_tokens:
            break
        position_ids = position_ids + 1                                           # (N, 1)
        out = model(input_ids=next_ids[:, None], attention_mask=attention_mask[:, :prompt_width + t + 1],
                    position_ids=position_ids, past_key_values=cache, use_cache=True)  # one new position per row
        cache = out.past_key_values
        logits = out.logits[:, -1]                                                # (N, V)
    shape = (len(prompt_ids), group_size, n_steps)
    return response_ids[:, :n_steps].reshape(shape), token_mask[:, :n_steps].reshape(shape)  # (B, G, T)


def repeated_cache(model, prompt_cache, group_size: int, max_cache_len: int):
    """The prompts' KV cache, each prompt's keys and values repeated for its G responses (prompt-major rows).

    Full attention: transformers' StaticCache of max_cache_len positions, written in place at each step (a cache
    that grows by concatenation copies every layer's keys and values at every step: quadratic in the length). A
    model with sliding-window layers keeps the growing cache, whose window the library rolls itself
    (tests/test_real_models.py checks both against a forward without cache), and so does generation under
    autocast, whose keys and values come out in float32 or bf16 from one step to the next while a static layer
    holds one dtype (tests/test_rollout.py)."""
    static = StaticCache(model.config, max_cache_len=max_cache_len)
    sliding = any(type(layer) is not StaticLayer for layer in static.layers)
    autocast = torch.is_autocast_enabled(prompt_cache.layers[0].keys.device.type)  # keys' and values' dtypes vary
    if sliding or autocast:                                  # a static layer holds one window and one dtype
        prompt_cache.batch_repeat_interleave(group_size)
        return prompt_cache
    for layer_idx, layer in enumerate(prompt_cache.layers):
        keys = layer.keys.repeat_interleave(group_size, dim=0)                   # (N, heads, P, d)
        static.update(keys, layer.values.repeat_interleave(group_size, dim=0), layer_idx)
    return static


# ----------------------------------------------------------------------------- log-probabilities
def response_logprobs(model, prompt_ids: list[list[int]], response_ids: torch.Tensor, token_mask: torch.Tensor,
                      tokenizer=None, temperature: float = 1.0) -> torch.Tensor:
    """log π_τ(o_t | q, o_<t) = log softmax(z_t / τ)[o_t] for every response token, float32, 0 on padding.

    The sampler drew o_t from softmax(z_t / τ) (then top-k / top-p), so the PPO ratio uses the TEMPERED log-prob,
    as TRL and verl do; top-k / top-p are not applied here: a token outside the kept set is never sampled, and
    both sides of the ratio use the same full tempered distribution. With `tokenizer`, special tokens other than
    EOS are excluded from the softmax exactly as in generate().

    Memory: the backbone runs on prompt + response, the LM head (V logits per position) on the response tokens
    only, LOGIT_CHUNK positions at a time, each chunk recomputed in backward (activation checkpointing), so the
    logits held at once are LOGIT_CHUNK × V, never (N, P + T, V): for a 1500-token prompt and a 150k vocabulary
    those would be ~1 GB per row.

    Shapes:
        prompt_ids    N token lists (one per response row), or B lists when response_ids is (B, G, T)
        response_ids  (N, T) or (B, G, T) long;  token_mask the same shape, bool
        returns       the shape of response_ids, float32
    """
    if token_mask.shape != response_ids.shape or token_mask.dtype != torch.bool:
        raise ValueError(f"token_mask must be bool with the shape of response_ids {tuple(response_ids.shape)}, "
                         f"got {token_mask.dtype} {tuple(token_mask.shape)}")
    if response_ids.dim() == 3:
        b_size, g_size, t_size = response_ids.shape
        rows = [ids for ids in prompt_ids for _ in range(g_size)]
        flat = response_logprobs(model, rows, response_ids.reshape(-1, t_size), token_mask.reshape(-1, t_size),
                                 tokenizer, temperature)                          # (N, T)
        return flat.reshape(b_size, g_size, t_size)                               # (B, G, T)
    if response_ids.dim() != 2 or len(prompt_ids) != response_ids.shape[0]:
        raise ValueError(f"need response_ids (N, T) with N = len(prompt_ids) = {len(prompt_ids)}, "
                         f"got {tuple(response_ids.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if getattr(model.config, "final_logit_softcapping", None):                   # Gemma 2: the head is not all
        raise ValueError("the policy soft-caps its logits after the LM head; response_logprobs applies the head alone")
    device = next(model.parameters()).device
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    prompt_tensor, prompt_mask = left_pad(prompt_ids, pad_id, device)             # (N, P)
    response_ids = response_ids.to(device)                                        # (N, T)
    token_mask = token_mask.to(device)                                            # (N, T)
    attention_mask = torch.cat([prompt_mask, token_mask], dim=1)                 # (N, P+T)
    hidden = model.base_model(input_ids=torch.cat([prompt_tensor, response_ids], dim=1), position_ids=positions(
        attention_mask), attention_mask=attention_mask.long()).last_hidden_state  # (N, P+T, H)
    hidden = hidden[:, prompt_tensor.shape[1] - 1:-1][token_mask]                 # (n, H) the states predicting o_t
    targets = response_ids[token_mask]                                            # (n,)
    suppress = None if tokenizer is None else suppressed_token_mask(tokenizer, model.config.vocab_size).to(device)
    head = model.get_output_embeddings()
    pieces = []
    for start in range(0, hidden.shape[0], LOGIT_CHUNK):
        chunk = (hidden[start:start + LOGIT_CHUNK], targets[start:start + LOGIT_CHUNK], head, temperature, suppress)
        pieces.append(checkpoint(_chunk_logprobs, *chunk, use_reentrant=False) if torch.is_grad_enabled()
                      else _chunk_logprobs(*chunk))                               # (n_chunk,)
    logp = torch.zeros(token_mask.shape, dtype=torch.float32, device=device)     # (N, T), 0 on padding
    return logp.masked_scatter(token_mask, torch.cat(pieces)) if pieces else logp


LOGIT_CHUNK = 1024                            # response positions per LM-head call in response_logprobs


def _chunk_logprobs(hidden, targets, head, temperature: float, suppress) -> torch.Tensor:
    """log softmax(head(h) / τ)[target] for one chunk of positions. (n, H), (n,) -> (n,) float32."""
    logits = head(hidden).float() / temperature                                   # (n, V)
    if suppress is not None:
        logits = logits.masked_fill(suppress, -math.inf)
    return logits.log_softmax(dim=-1).gather(-1, targets[:, None]).squeeze(-1)    # (n,)


def microbatches(n_rows: int, row_tokens: int, max_batch_tokens: int) -> list[slice]:
    """Row slices of at most max_batch_tokens sequence positions each, for log-probs and backward in pieces.

    >>> microbatches(5, row_tokens=100, max_batch_tokens=250)
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    if n_rows < 1 or row_tokens < 1 or max_batch_tokens < 1:
        raise ValueError(f"need n_rows, row_tokens and max_batch_tokens >= 1, got {n_rows}, {row_tokens}, "
                         f"{max_batch_tokens}")
    step = max(1, max_batch_tokens // row_tokens)
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


def decode_responses(tokenizer, response_ids: torch.Tensor, token_mask: torch.Tensor) -> list[list[str]]:
    """B x G response texts: the masked tokens without EOS, through the tokenizer's own decoder.

    tokenizer.decode merges BPE pieces of real models ("Ġbo" "at" -> " boat"); the toy word-level tokenizer
    has no decoder, so its tokens are joined by single spaces. No clean-up of spaces: the text is exactly
    what the tokens spell ("boat ." stays "boat .", which the judge reads). Shapes: response_ids,
    token_mask (B, G, T).
    """
    if response_ids.dim() != 3 or token_mask.shape != response_ids.shape:
        raise ValueError(f"need response_ids and token_mask of one shape (B, G, T), got "
                         f"{tuple(response_ids.shape)} and {tuple(token_mask.shape)}")
    texts = []
    for ids_row, mask_row in zip(response_ids.tolist(), token_mask.tolist()):
        group = []
        for ids, mask in zip(ids_row, mask_row):
            kept = [i for i, m in zip(ids, mask) if m and i != tokenizer.eos_token_id]
            group.append(tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False))
        texts.append(group)
    return texts
