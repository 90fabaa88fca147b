"""Full fine-tuning steps only the word-embedding rows of tokens the training data holds.

A word embedding's row gets a gradient only from batches holding its token. A row whose token is
nowhere in the training set has a zero gradient at every step, so AdamW's moments for it stay zero
and its update is the weight decay alone: the row is multiplied by (1 - lr * weight_decay). Yet a
training step zeroes the dense gradient of the whole table, adds the batch's rows into it, takes
its norm for clipping, scales it and runs AdamW over every row: BERT's vocabulary is 30,522 rows,
11.7M of MiniLM-L6's 22.7M weights, and 3000 SST-2 rows use 5,877 of them (5,880 with the special
tokens). On a 2-core CPU in bf16 that is ~11 of ~145 ms a step (AdamW 4.6, the gradient's zeroing
4.4, clipping 2.7).

So while a model whose every weight trains is in training, its input embedding is replaced by
UsedRowsEmbedding: the rows of the tokens in the tokenised training split (and the tokenizer's
special tokens) are one parameter, the others a tensor outside autograd whose weight decay is
kept as one factor, the product of the (1 - lr * weight_decay) of each optimizer step, applied when
the table is read (evaluation, a checkpoint, the end of training). Gradients, moments, the
clipping norm and every update of the used rows are those of the whole table's (the norm up to the
order of its sum); the other rows differ from AdamW's step-by-step decay by floating-point
rounding only. A checkpoint holds the whole table under the embedding's own name and loads back
into either form; after training the model's own nn.Embedding is back, holding the trained table.

Not where the table is also read elsewhere (a language-model head tied to it: every row has a
gradient there), nor under FSDP or DeepSpeed (they rebuild the parameters into their own flat or
sharded ones and step those through their own optimizer wrappers), nor for other optimizers than
AdamW, where a zero gradient does not mean the decay alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from llmkit.models.parameters import readers_per_parameter
from llmkit.runtime import switched_on

if TYPE_CHECKING:
    from datasets import Dataset
    from torch import Tensor

# Opting out: LLMKIT_TRAIN_USED_EMBEDDING_ROWS=0 trains the whole table as one parameter.
USED_ROWS_ENV = "LLMKIT_TRAIN_USED_EMBEDDING_ROWS"


class UsedRowsEmbedding(nn.Module):
    """An nn.Embedding's table, split into the rows the training data uses (a parameter) and the
    rest (decayed lazily). Its state dict is the original's: `weight`, the whole table."""

    def __init__(self, embedding: nn.Embedding, used_ids: Tensor) -> None:
        super().__init__()
        table = embedding.weight.detach()
        self.num_embeddings, self.embedding_dim = table.shape
        self.used_ids = used_ids.to(table.device)
        row_of_token = torch.full((self.num_embeddings,), -1, dtype=torch.long, device=table.device)
        row_of_token[self.used_ids] = torch.arange(len(self.used_ids), device=table.device)
        self.row_of_token = row_of_token
        self.used = nn.Parameter(table[self.used_ids].clone())
        self.rest = table  # read only for tokens outside the training data (evaluation)
        self.rest_decay = 1.0  # pending on `rest`: the product of the decays since last applied
        pad = embedding.padding_idx
        self.padding_idx = int(row_of_token[pad]) if pad is not None and row_of_token[pad] >= 0 else None
        self._register_state_dict_hook(_whole_table_in_state_dict)
        self._register_load_state_dict_pre_hook(_split_table_from_state_dict, with_module=True)

    def forward(self, input_ids: Tensor) -> Tensor:
        rows = self.row_of_token[input_ids]
        unused = rows < 0
        if not bool(unused.any()):
            return nn.functional.embedding(rows, self.used, self.padding_idx)
        if self.training:
            # Its gradient would be lost: the used rows are every token of the training split.
            raise RuntimeError(
                f"a training batch holds tokens the training split does not (an llmkit bug: "
                f"{USED_ROWS_ENV}=0 trains the whole table instead)"
            )
        self.apply_rest_decay()
        own = nn.functional.embedding(rows.clamp(min=0), self.used, self.padding_idx)
        return torch.where(unused.unsqueeze(-1), nn.functional.embedding(input_ids, self.rest), own)

    def note_step(self, learning_rate: float, weight_decay: float) -> None:
        """AdamW stepped: the unused rows would have been multiplied by this."""
        self.rest_decay *= 1.0 - learning_rate * weight_decay

    @torch.no_grad()
    def apply_rest_decay(self) -> None:
        if self.rest_decay != 1.0:
            self.rest.mul_(self.rest_decay)
            self.rest_decay = 1.0

    @torch.no_grad()
    def whole_table(self) -> Tensor:
        table = self.rest * self.rest_decay if self.rest_decay != 1.0 else self.rest.clone()
        table[self.used_ids] = self.used.detach().to(table.dtype)
        return table

    def _apply(self, fn: Any, recurse: bool = True) -> UsedRowsEmbedding:
        # .to() / .cuda() / .half() move the tensors kept outside parameters and buffers too (as
        # buffers, DDP would broadcast them from the first process at every forward).
        super()._apply(fn, recurse)
        self.rest = fn(self.rest)
        self.row_of_token = self.row_of_token.to(self.rest.device)
        self.used_ids = self.used_ids.to(self.rest.device)
        return self

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, trained rows={len(self.used_ids)}"


def _whole_table_in_state_dict(
    module: UsedRowsEmbedding, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    state_dict.pop(prefix + "used", None)
    state_dict[prefix + "weight"] = module.whole_table()


def _split_table_from_state_dict(
    module: UsedRowsEmbedding, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    table = state_dict.pop(prefix + "weight", None)
    if table is None:
        return
    with torch.no_grad():
        module.rest.copy_(table)
        module.rest_decay = 1.0
    state_dict[prefix + "used"] = table[module.used_ids.to(table.device)]


def used_token_ids(train_split: Dataset, special_ids: Iterable[int], vocabulary: int) -> Tensor:
    """The sorted ids of every token in a tokenised split's input_ids, and of `special_ids`
    (collators may add some)."""
    column = train_split.with_format("arrow")["input_ids"]
    tokens = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    seen = torch.zeros(vocabulary, dtype=torch.bool)
    seen[torch.tensor(tokens, dtype=torch.long)] = True
    special = [i for i in special_ids if i is not None and 0 <= i < vocabulary]
    seen[torch.tensor(special, dtype=torch.long)] = True
    return seen.nonzero().flatten()


def used_rows_while_training(
    model: nn.Module, tokenizer: Any, train_split: Dataset, engine_owned: bool
) -> contextlib.AbstractContextManager[Any]:
    """training_used_rows for the tokens of `train_split` where the model can train that way;
    otherwise a block that changes nothing. `engine_owned`: FSDP or DeepSpeed will own the
    parameters (DistributedSection.engine_owns_parameters)."""
    if not can_train_used_rows(model, engine_owned):
        return contextlib.nullcontext()
    vocabulary = model.get_input_embeddings().num_embeddings  # type: ignore[operator]
    return training_used_rows(model, used_token_ids(train_split, tokenizer.all_special_ids, vocabulary))


def wants_used_rows() -> bool:
    """LLMKIT_TRAIN_USED_EMBEDDING_ROWS: on unless 0/false/no/off; another value is an error,
    which `finetune` raises before it writes anything (pipeline.prepare asks first)."""
    return switched_on(USED_ROWS_ENV, "train the whole word-embedding table as one parameter")


def can_train_used_rows(model: nn.Module, engine_owned: bool) -> bool:
    """Whether the model's input embedding trains as UsedRowsEmbedding (see the module);
    `engine_owned`: FSDP or DeepSpeed will own the parameters."""
    if not wants_used_rows():
        return False
    embedding = model.get_input_embeddings()  # type: ignore[operator]
    if type(embedding) is not nn.Embedding or engine_owned or not embedding.weight.requires_grad:
        return False
    if embedding.max_norm is not None or embedding.scale_grad_by_freq or embedding.sparse:
        return False
    # Read anywhere else too (a language-model head tied to it), every row gets gradients there.
    return readers_per_parameter(model)[id(embedding.weight)] == 1


@contextlib.contextmanager
def training_used_rows(model: nn.Module, used_ids: Tensor) -> Iterator[UsedRowsEmbedding]:
    """The model's input embedding as UsedRowsEmbedding until the block ends; then its own
    nn.Embedding again, holding the trained table (also when the block raised)."""
    embedding = model.get_input_embeddings()  # type: ignore[operator]
    used = UsedRowsEmbedding(embedding, used_ids)
    model.set_input_embeddings(used)  # type: ignore[operator]
    try:
        yield used
    finally:
        with torch.no_grad():
            embedding.weight.data = used.whole_table()
        model.set_input_embeddings(embedding)  # type: ignore[operator]


def follow_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Keep the weight decay of UsedRowsEmbedding's unused rows with each step the optimizer
    takes (steps it skips, as a gradient scaler does on overflow, are not counted)."""
    modules = [m for m in model.modules() if isinstance(m, UsedRowsEmbedding)]
    if not modules:
        return
    if not isinstance(optimizer, torch.optim.AdamW):
        raise RuntimeError(
            f"UsedRowsEmbedding decays its unused rows as AdamW does; the optimizer is "
            f"{type(optimizer).__name__} (an llmkit bug: {USED_ROWS_ENV}=0 trains the whole table instead)"
        )

    def note(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for module in modules:
            for group in optimizer.param_groups:
                if any(p is module.used for p in group["params"]):
                    module.note_step(float(group["lr"]), float(group["weight_decay"]))

    optimizer.register_step_post_hook(note)
