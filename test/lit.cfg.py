# lit configuration of the Kiln suite: FileCheck tests driven by kiln-opt.
import os
import sys

import lit.formats
from lit.llvm import llvm_config

config.name = "Kiln"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.kiln_obj_root, "test")
# GoogleTest sources and their CMake files are not lit tests.
config.excludes = ["CMakeLists.txt", "runtime", "lit.cfg.py", "lit.site.cfg.py", "truncations.py"]

config.substitutions.append(("%PATH%", config.environment["PATH"]))
config.substitutions.append(("%python", sys.executable))
# The repository root, for tests that compile the examples.
config.substitutions.append(("%kiln_src_root", os.path.dirname(config.test_source_root)))
llvm_config.with_system_environment(["HOME", "INCLUDE", "LIB", "TMP", "TEMP"])
llvm_config.use_default_substitutions()

# Our tools first, then FileCheck, not and count from LLVM 22.
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)
llvm_config.add_tool_substitutions(["kiln-opt", "kilnc"], [config.kiln_tools_dir])

# The GEMM kernel compiler script and ptxas (CUDA 13; no GPU needed).
import shutil
config.substitutions.append(("%kiln_compile_gemm", os.path.join(
    os.path.dirname(config.test_source_root), "compiler", "tools", "kiln-compile-gemm.py")))
config.substitutions.append(("%kiln_opt_path", os.path.join(config.kiln_tools_dir, "kiln-opt")))
ptxas = shutil.which("ptxas") or "/usr/local/cuda/bin/ptxas"
if os.path.exists(ptxas):
    config.available_features.add("ptxas")
    config.substitutions.append(("%ptxas", ptxas))
