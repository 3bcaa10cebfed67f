"""The CALRec model object, with t5x's method names (paper sections 3.3-3.5).

`CALRecModel` wraps the decoder of `trainer.network` with
- `get_initial_variables(rng, input_shapes)`,
- `loss_fn(params, batch, dropout_rng) -> (loss, metrics)`: equation 4,
- `score_batch(params, batch)`: log-probabilities of target tokens,
- `predict_batch_with_aux(params, batch, rng, num_decodes=..., ...)`:
  temperature sampling with a key/value cache.

The names and signatures follow t5x's `BaseModel`, not all of its interface:
metrics are plain arrays (the training loop averages them, no `clu.metrics`),
there is no `eval_fn` or `predict_batch`, and `predict_batch_with_aux` always
returns all `num_decodes` samples per prompt ([B, N, T], t5x's
`return_all_decodes=True`), with the sampling settings as keyword arguments
rather than t5x's `decoder_params`. Two outputs differ from t5x's:
`predict_batch_with_aux` sorts a prompt's samples best first (decreasing
log-probability), where t5x's `return_all_decodes=True` sorts them by
increasing log-probability (best last; the evaluator relies on best first);
and `score_batch(..., return_intermediates=True)` returns
`(scores, {'token_scores': [B, L]})`, not t5x's flax intermediates collection
(`{'decoder': {'token_scores': (...,), ...}}`).

Training batches hold the model features of docs/contracts.md. Attention is
causal everywhere (as in PaLM-2), so `decoder_causal_attention` is only read
at inference, to find each prompt's length. Inference batches use the t5x
decoder-only prompt convention, see `predict_batch_with_aux` and
`prompt_batch`.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from trainer import decoding
from trainer import losses
from trainer import network
from trainer import output_projection

Array = jax.Array
Batch = Mapping[str, Array]
PyTree = Any

# Features of a training batch (docs/contracts.md).
TRAIN_FEATURES = (
    "decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
    "decoder_causal_attention", "history_pool_weights", "target_pool_weights",
    "item_input_tokens", "item_pool_weights")


class PooledVectors(NamedTuple):
  """Mean-pooled final hidden states of a batch (paper section 3.4), [B, E]."""

  item: Array     # v^T: the item-alone pass over item_pool_weights
  target: Array   # v^{T|U}: the joint pass over target_pool_weights
  history: Array  # v^U: the joint pass over history_pool_weights
  mask: Array     # [B] bool: False for padding examples


class LossTerms(NamedTuple):
  """Parts of the loss that add up over the examples of a batch."""

  nig_total: Array      # sum of -log P(t_j | t_<j) over target tokens
  target_tokens: Array  # number of target tokens
  vectors: Optional[PooledVectors]  # None without the item tower


@gin.configurable
class CALRecModel:
  """Decoder-only LM trained with the CALRec objective (paper eq. 4)."""

  def __init__(self,
               config: network.TransformerConfig,
               alpha: float = 0.125,
               beta: float = -0.025,
               contrastive_temperature: float = 0.5,
               eos_id: int = 1,
               loss_vocab_chunk_size: Optional[int] = 16384,
               stop_ids: Sequence[int] = (),
               shared_prefix: bool = True,
               sampler: str = "gumbel"):
    """Creates the model object.

    Args:
      config: decoder sizes.
      alpha: weight of L_TT (paper section 4: 0.125).
      beta: weight of L_UT (paper section 4: -0.025).
      contrastive_temperature: tau_c of equations 2 and 3 (paper section 4:
        0.5); the sampling temperature is an argument of
        `predict_batch_with_aux`.
      eos_id: end-of-sequence id of the vocabulary.
      loss_vocab_chunk_size: L_NIG and `score_batch` take log-probabilities
        over chunks of this many vocabulary ids (`trainer.output_projection`),
        so no [positions, vocab] logits are held; vocabularies up to this
        size are one chunk. None projects the whole vocabulary at once (the
        decoder's own output layer).
      stop_ids: ids besides EOS that end a sample (paper section 3.5): the
        newline-bearing pieces of a pretrained LM's vocabulary, whose text
        runs on past the item (`tasks.vocab.item_stop_ids`, set by
        `model_dir.load_for_inference`). EOS always ends one.
      shared_prefix: sampling keeps one copy of each prompt's cache for all
        its samples (`network.shared_prefix_cache`); False copies it per
        sample (the benchmark's baseline, same tokens).
      sampler: the seeded stream that draws sampled tokens
        (`decoding.SAMPLERS`): "gumbel", or "inverse_cdf", which draws one
        random number per token instead of one per vocabulary entry.
    """
    if contrastive_temperature <= 0:
      raise ValueError(f"contrastive_temperature must be > 0, got "
                       f"{contrastive_temperature}.")
    self.config = config
    self.module = network.Decoder(config)
    self.alpha = alpha
    self.beta = beta
    self.contrastive_temperature = contrastive_temperature
    self.eos_id = eos_id
    self.stop_ids = tuple(sorted({int(eos_id), *(int(i) for i in stop_ids)}))
    self.shared_prefix = shared_prefix
    if sampler not in decoding.SAMPLERS:
      raise ValueError(f"Unknown sampler {sampler!r}; one of "
                       f"{decoding.SAMPLERS}.")
    self.sampler = sampler
    if loss_vocab_chunk_size is not None and loss_vocab_chunk_size < 1:
      raise ValueError(f"loss_vocab_chunk_size must be >= 1, got "
                       f"{loss_vocab_chunk_size}.")
    self.loss_vocab_chunk_size = loss_vocab_chunk_size
    self._predict = jax.jit(
        self._predict_impl,
        static_argnames=("num_decodes", "max_decode_length"))

  @property
  def uses_item_tower(self) -> bool:
    return self.alpha != 0 or self.beta != 0

  def get_initial_variables(
      self, rng: Array, input_shapes: Mapping[str, Sequence[int]],
      input_types: Optional[Mapping[str, Any]] = None) -> PyTree:
    """Variables (boxed with logical axis names) for the given input shapes.

    `input_types` is t5x's argument; token ids are int32 whatever it says.
    """
    del input_types
    tokens = jnp.ones(input_shapes["decoder_input_tokens"], jnp.int32)
    return self.module.init(rng, tokens)

  def _forward(self, params: PyTree, tokens: Array, *,
               dropout_rng: Optional[Array] = None, compute_logits=True,
               logits_at: Optional[Array] = None):
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    return self.module.apply({"params": params}, tokens,
                             deterministic=dropout_rng is None,
                             compute_logits=compute_logits,
                             logits_at=logits_at, rngs=rngs)

  def loss_terms(self, params: PyTree, batch: Batch,
                 dropout_rng: Optional[Array], *,
                 with_nig: bool = True) -> LossTerms:
    """The additive parts of the loss of one (micro)batch.

    The output projection runs on the target span only (at most Li positions
    per row, Li = item_input_tokens' length), over vocabulary chunks unless
    `loss_vocab_chunk_size` is None; `with_nig=False` skips it (and L_NIG)
    altogether. v^{T|U} and v^U are mean-pooled final hidden states of
    the joint pass over `target_pool_weights` and `history_pool_weights`; v^T
    of the item-alone pass over `item_pool_weights`.
    """
    item_rng = joint_rng = None
    if dropout_rng is not None:
      joint_rng, item_rng = jax.random.split(dropout_rng)
    positions = None
    if with_nig:
      positions = losses.loss_positions(batch["decoder_loss_weights"],
                                        batch["item_input_tokens"].shape[1])
    logits, hidden, _ = self._forward(
        params, batch["decoder_input_tokens"], dropout_rng=joint_rng,
        compute_logits=with_nig and self.loss_vocab_chunk_size is None,
        logits_at=positions)
    nig_total = jnp.float32(0.0)
    if with_nig:
      log_probs = self._token_log_probs(
          params, logits, hidden,
          jnp.take_along_axis(batch["decoder_target_tokens"], positions, 1),
          positions)
      weights = jnp.take_along_axis(batch["decoder_loss_weights"], positions,
                                    1)
      nig_total = -jnp.sum(log_probs * weights.astype(log_probs.dtype))
    vectors = None
    if self.uses_item_tower:
      _, item_hidden, _ = self._forward(params, batch["item_input_tokens"],
                                        dropout_rng=item_rng,
                                        compute_logits=False)
      vectors = PooledVectors(
          item=losses.mean_pool(item_hidden, batch["item_pool_weights"]),
          target=losses.mean_pool(hidden, batch["target_pool_weights"]),
          history=losses.mean_pool(hidden, batch["history_pool_weights"]),
          mask=jnp.sum(batch["item_pool_weights"], axis=-1) > 0)
    return LossTerms(nig_total=nig_total,
                     target_tokens=jnp.sum(batch["decoder_loss_weights"]),
                     vectors=vectors)

  def _token_log_probs(self, params: PyTree, logits: Optional[Array],
                       hidden: Array, targets: Array,
                       positions: Optional[Array] = None) -> Array:
    """log P(targets) [B, K] from the decoder's logits [B, K, V] when given,
    else from hidden states [B, L, E] (taken at `positions` [B, K]) over
    vocabulary chunks (`trainer.output_projection`; paper section 3.4)."""
    if logits is not None:
      return losses.token_log_probs(logits, targets)
    if positions is not None:
      hidden = jnp.take_along_axis(hidden, positions[:, :, None], axis=1)
    return output_projection.token_log_probs(
        output_projection.from_params(params, self.config), hidden, targets,
        self.loss_vocab_chunk_size)

  def contrastive_losses(self, vectors: PooledVectors) -> tuple[Array, Array]:
    """(L_TT, L_UT), equations 2 and 3, over every example of `vectors`."""
    tau = self.contrastive_temperature
    return (losses.info_nce(vectors.item, vectors.target, tau, vectors.mask),
            losses.info_nce(vectors.item, vectors.history, tau, vectors.mask))

  def combined_loss(self, nig: Array, tt: Array, ut: Array) -> Array:
    """Equation 4 with this model's weights: of one batch's terms
    (`loss_from_terms`) or of a whole split's (the trainer's validation)."""
    return losses.calrec_loss(nig, tt, ut, self.alpha, self.beta)

  def loss_from_terms(self, terms: LossTerms
                     ) -> tuple[Array, dict[str, Array]]:
    """Equation 4 from the terms of a whole batch (see `loss_fn`)."""
    num_tokens = terms.target_tokens.astype(jnp.float32)
    nig = terms.nig_total / jnp.maximum(num_tokens, 1.0)
    tt = ut = jnp.float32(0.0)
    if terms.vectors is not None:
      tt, ut = self.contrastive_losses(terms.vectors)
    loss = self.combined_loss(nig, tt, ut)
    metrics = {"loss": loss, "nig_loss": nig, "tt_loss": tt, "ut_loss": ut,
               "target_tokens": num_tokens}
    if terms.vectors is not None:
      # The examples L_TT and L_UT average over (padding excluded).
      metrics["contrastive_examples"] = jnp.sum(
          terms.vectors.mask.astype(jnp.float32))
    return loss, metrics

  def loss_fn(self, params: PyTree, batch: Batch,
              dropout_rng: Optional[Array]) -> tuple[Array, dict[str, Array]]:
    """The CALRec loss (1-a-b) L_NIG + a L_TT + b L_UT on one global batch.

    L_NIG is normalised per target token of the batch, where equation 1 sums
    over each user's target tokens (README, "Where this implementation departs
    from the paper"). Padding examples (no item tokens) count in no term.
    See `loss_terms` for the pooled vectors.

    Returns:
      (loss, metrics) where metrics holds 'loss', 'nig_loss', 'tt_loss',
      'ut_loss', 'target_tokens' and, with the item tower,
      'contrastive_examples'.
    """
    return self.loss_from_terms(self.loss_terms(params, batch, dropout_rng))

  def count_input_tokens(self, batch: Batch) -> Array:
    """Non-padding positions the training passes process (for tokens/s)."""
    count = jnp.count_nonzero(batch["decoder_target_tokens"])
    if self.uses_item_tower:
      count += jnp.count_nonzero(batch["item_input_tokens"])
    return count

  def score_batch(self, params: PyTree, batch: Batch,
                  return_intermediates: bool = False
                 ) -> Array | tuple[Array, dict[str, Array]]:
    """Sum of log P(decoder_target_tokens) weighted by decoder_loss_weights.

    Log-probabilities are taken over vocabulary chunks (no [B, L, V] logits)
    unless `loss_vocab_chunk_size` is None.

    Returns:
      sequence scores [B]; with `return_intermediates`, also
      {'token_scores': [B, L]} (weighted per-token log-probs), a flat dict
      rather than t5x's nested flax intermediates.
    """
    logits, hidden, _ = self._forward(
        params, batch["decoder_input_tokens"],
        compute_logits=self.loss_vocab_chunk_size is None)
    token_scores = self._token_log_probs(
        params, logits, hidden, batch["decoder_target_tokens"]) * batch[
            "decoder_loss_weights"].astype(jnp.float32)
    sequence_scores = jnp.sum(token_scores, axis=-1)
    if return_intermediates:
      return sequence_scores, {"token_scores": token_scores}
    return sequence_scores

  def predict_batch_with_aux(
      self,
      params: PyTree,
      batch: Batch,
      rng: Optional[Array] = None,
      *,
      num_decodes: int = 32,
      temperature: float = 0.5,
      max_decode_length: int = 80,
  ) -> tuple[Array, dict[str, Array]]:
    """Temperature sampling of `num_decodes` continuations per prompt.

    The defaults are the paper's (section 4): N_gen 32, temperature 0.5 and
    at most 80 decoded tokens.

    Inference batch (t5x decoder-only convention; build it with
    `prompt_batch`):
      decoder_input_tokens [B, P] int32: the start token (0, or the
        vocabulary's BOS: `tasks.vocab.decoder_start_id`, as in training),
        then the prompt tokens (no EOS), then 0 padding. The training
        features of a validation or test example can be passed as they
        are: only the prompt is read.
      decoder_causal_attention [B, P] int32: 1 on the start position and the
        prompt positions, 0 elsewhere; its row sum is the prompt length + 1.

    The prompt is run once (prefill), then each step feeds one token per
    sample. With `shared_prefix` the samples of a prompt all read its one
    cache and keep caches of their generated tokens only
    (`network.shared_prefix_cache`, a cascade as in Hydragen); else the
    prompt's cache is copied `num_decodes` times. Compiled once per (B, P,
    num_decodes, max_decode_length); temperature and rng are traced.
    Sampling ends once every sample has reached a stop id (`stop_ids`: EOS,
    and newline pieces for a pretrained LM) or `max_decode_length` tokens.

    Returns:
      decodes [B, num_decodes, max_decode_length] int32: the generated tokens,
        the stop token (EOS or newline piece) included when generated, 0
        after it;
      {'scores': [B, num_decodes] float32}: each sample's sequence
        log-probability under the model at temperature 1 (untempered: the
        model's probability of the text, not of the draw), the stop token
        included and nothing after it.
      Samples of a prompt are sorted by score, best first: the reverse of
      t5x's `return_all_decodes=True`, which puts the best last.
    """
    if rng is None:
      rng = jax.random.PRNGKey(0)
    return self._predict(params, batch["decoder_input_tokens"],
                         batch["decoder_causal_attention"], rng,
                         jnp.float32(temperature), num_decodes=num_decodes,
                         max_decode_length=max_decode_length)

  def _predict_impl(self, params, tokens, causal_attention, rng, temperature,
                    *, num_decodes, max_decode_length):
    batch_size, prompt_length = tokens.shape
    prompt_lengths = jnp.maximum(
        jnp.sum(causal_attention, axis=-1).astype(jnp.int32), 1)
    # The shared prompt cache holds the prompt only; copies also hold the
    # generated tokens.
    cache = network.init_cache(
        self.config, batch_size,
        prompt_length + (0 if self.shared_prefix else max_decode_length))
    logits, _, cache = self.module.apply(
        {"params": params}, tokens, cache=cache, lengths=prompt_lengths,
        logits_at=(prompt_lengths - 1)[:, None])

    def repeat(x):
      return jnp.repeat(x, num_decodes, axis=0)

    prefixes = None
    if self.shared_prefix:
      cache = network.shared_prefix_cache(self.config, cache, prompt_lengths,
                                          num_decodes, max_decode_length)
      # The loop carries the samples' own caches; the prompt's is constant.
      prefixes = [layer.pop("prefix") for layer in cache]
    else:
      cache = jax.tree.map(repeat, cache)

    def step_fn(step_tokens, positions, step_cache):
      if prefixes is not None:
        step_cache = [dict(layer, prefix=prefix)
                      for layer, prefix in zip(step_cache, prefixes)]
      step_logits, _, step_cache = self.module.apply(
          {"params": params}, step_tokens, positions, step_cache)
      if prefixes is not None:
        step_cache = [{name: value for name, value in layer.items()
                       if name != "prefix"} for layer in step_cache]
      return step_logits[:, 0], step_cache

    decodes, scores = decoding.temperature_sample(
        step_fn, repeat(logits[:, 0]), cache, repeat(prompt_lengths), rng,
        temperature=temperature, max_decode_length=max_decode_length,
        stop_ids=self.stop_ids, sampler=self.sampler)
    decodes = decodes.reshape(batch_size, num_decodes, max_decode_length)
    scores = scores.reshape(batch_size, num_decodes)
    order = jnp.argsort(-scores, axis=-1)
    return (jnp.take_along_axis(decodes, order[:, :, None], axis=1),
            {"scores": jnp.take_along_axis(scores, order, axis=1)})


def prompt_batch(prompt_tokens: Sequence[Sequence[int]], batch_size: int,
                 prompt_length: int,
                 start_token: int = 0) -> dict[str, np.ndarray]:
  """Builds a fixed-shape inference batch from tokenized prompts.

  Args:
    prompt_tokens: token ids of each prompt (tasks' tokenization, no EOS).
    batch_size: rows of the batch; rows past len(prompt_tokens) hold an
      empty prompt and their decodes are to be ignored.
    prompt_length: P, at least the longest prompt + 1 (the start token).
    start_token: first token of every row: the decoder start the model
      trained with, `tasks.vocab.decoder_start_id` of its vocabulary (0, or
      the BOS of a pretrained LM's vocabulary such as Gemma 3's).

  Returns:
    {'decoder_input_tokens', 'decoder_causal_attention'}, int32 [B, P].

  Raises:
    ValueError: too many prompts, or a prompt longer than P - 1 tokens (the
      caller must drop its oldest items, paper section 3.2).
  """
  if len(prompt_tokens) > batch_size:
    raise ValueError(f"{len(prompt_tokens)} prompts do not fit a batch of "
                     f"{batch_size}.")
  tokens = np.zeros((batch_size, prompt_length), np.int32)
  tokens[:, 0] = start_token
  causal = np.zeros((batch_size, prompt_length), np.int32)
  causal[:, 0] = 1
  for row, ids in enumerate(prompt_tokens):
    if len(ids) + 1 > prompt_length:
      raise ValueError(
          f"Prompt {row} has {len(ids)} tokens; at most {prompt_length - 1} "
          "fit. Drop its oldest history items before building the batch.")
    tokens[row, 1:len(ids) + 1] = ids
    causal[row, :len(ids) + 1] = 1
  return {"decoder_input_tokens": tokens, "decoder_causal_attention": causal}


def unboxed_params(variables: PyTree) -> PyTree:
  """The 'params' collection without its logical-axis metadata."""
  return nn.meta.unbox(variables)["params"]
