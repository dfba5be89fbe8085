# Embeds a binary file in a C++ source: `cmake -DINPUT=file -DOUTPUT=out.cpp
# -DFUNCTION=ns::name -DHEADER=decl.h -P embed_file.cmake` writes OUTPUT
# defining `std::string_view FUNCTION()` over INPUT's bytes (declared in
# HEADER). The bytes are 64-byte aligned: the driver parses cubins in place.
# (CUDA's bin2c writes broken code when asked for an alignment.)
foreach(variable INPUT OUTPUT FUNCTION HEADER)
  if(NOT DEFINED ${variable})
    message(FATAL_ERROR "embed_file.cmake: -D${variable}=... is required")
  endif()
endforeach()

file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" hex_length)
if(hex_length EQUAL 0)
  message(FATAL_ERROR "embed_file.cmake: ${INPUT} is empty")
endif()
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){24})" "\\1\n" bytes "${bytes}")

file(WRITE "${OUTPUT}"
"// Generated from ${INPUT} by embed_file.cmake; do not edit.
#include \"${HEADER}\"

#include <string_view>

namespace {
alignas(64) const unsigned char kEmbeddedBytes[] = {
${bytes}
};
} // namespace

std::string_view ${FUNCTION}() {
  return {reinterpret_cast<const char *>(kEmbeddedBytes),
          sizeof(kEmbeddedBytes)};
}
")
