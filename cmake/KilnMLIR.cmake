# Finds LLVM/MLIR 22 and brings in their CMake helpers (tablegen, add_mlir_*).
# Out-of-tree build against Debian's packages: static MLIR libraries plus the
# shared libLLVM.so.22.1.
if(NOT MLIR_DIR AND NOT DEFINED ENV{MLIR_DIR})
  find_program(KILN_LLVM_CONFIG NAMES llvm-config-22 llvm-config)
  if(KILN_LLVM_CONFIG)
    execute_process(COMMAND ${KILN_LLVM_CONFIG} --prefix
                    OUTPUT_VARIABLE KILN_LLVM_PREFIX OUTPUT_STRIP_TRAILING_WHITESPACE)
    set(MLIR_DIR "${KILN_LLVM_PREFIX}/lib/cmake/mlir")
  endif()
endif()

# MLIR's version file only accepts an exact major.minor request, so check the
# major version ourselves.
find_package(MLIR CONFIG)
if(NOT MLIR_FOUND OR NOT LLVM_VERSION_MAJOR EQUAL 22)
  message(FATAL_ERROR
    "Kiln needs MLIR 22. On Debian 12: "
    "apt-get install llvm-22-dev llvm-22-tools libmlir-22-dev mlir-22-tools "
    "(or run scripts/install-deps), or pass -DMLIR_DIR=<prefix>/lib/cmake/mlir.")
endif()
message(STATUS "Kiln: MLIR ${LLVM_PACKAGE_VERSION} from ${MLIR_DIR}")

list(APPEND CMAKE_MODULE_PATH "${MLIR_CMAKE_DIR}" "${LLVM_CMAKE_DIR}")
set(LLVM_RUNTIME_OUTPUT_INTDIR ${CMAKE_BINARY_DIR}/bin)
set(LLVM_LIBRARY_OUTPUT_INTDIR ${CMAKE_BINARY_DIR}/lib)
set(MLIR_BINARY_DIR ${CMAKE_BINARY_DIR})
include(TableGen)
include(AddLLVM)
include(AddMLIR)

# Directory of lit, FileCheck, not, count for the lit suite.
set(KILN_LLVM_TOOLS_DIR "${LLVM_TOOLS_BINARY_DIR}")

separate_arguments(KILN_LLVM_DEFINITIONS NATIVE_COMMAND "${LLVM_DEFINITIONS}")

# Compile settings for a target built on MLIR: LLVM/MLIR headers as SYSTEM
# includes (their warnings are not ours), our warnings, LLVM's definitions.
# add_mlir_*_library compiles through an object library obj.<target>, which
# gets the same settings.
function(kiln_mlir_target target)
  set(targets ${target})
  if(TARGET obj.${target})
    list(APPEND targets obj.${target})
  endif()
  foreach(t IN LISTS targets)
    target_include_directories(${t} SYSTEM PUBLIC ${LLVM_INCLUDE_DIRS} ${MLIR_INCLUDE_DIRS})
    target_compile_definitions(${t} PUBLIC ${KILN_LLVM_DEFINITIONS})
    target_compile_options(${t} PRIVATE ${KILN_WARNING_FLAGS})
  endforeach()
endfunction()
