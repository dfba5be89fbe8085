//===- tokenizer.cpp - DeepSeek-V3 tokenizer and chat format --------------===//
//
// Reproduces HF `tokenizers` (Tokenizer::encode with add_special_tokens =
// false, Tokenizer::decode) for byte-level BPE tokenizer.json files like
// DeepSeek-V3's, and the DeepSeek-V3 chat template. Comments name the HF
// behaviour each piece mirrors, since exact id equality is the contract.
//
//===----------------------------------------------------------------------===//

#include "kiln/tokenizer.h"

#include "kiln/error.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <nlohmann/json.hpp>
#include <pcre2.h>

#include <array>
#include <fstream>
#include <mutex>
#include <queue>
#include <sstream>
#include <unordered_map>

namespace kiln {
namespace {

using Json = nlohmann::json;

//===----------------------------------------------------------------------===//
// UTF-8
//===----------------------------------------------------------------------===//

enum class Utf8Status { Valid, Invalid, Incomplete };

/// Classifies the UTF-8 sequence at p[0, n), n > 0, by the Unicode "maximal
/// subpart" rule (the one Rust's from_utf8_lossy and WHATWG decoders follow):
///   Valid:      a whole character of `length` bytes;
///   Invalid:    `length` bytes (>= 1) that can never start a character and
///               are replaced by one U+FFFD;
///   Incomplete: all n bytes are a proper prefix of some valid character.
Utf8Status classifyUtf8(const unsigned char *p, size_t n, size_t &length) {
  unsigned char lead = p[0];
  if (lead < 0x80) {
    length = 1;
    return Utf8Status::Valid;
  }
  // Continuation bytes needed, and the allowed range of the first one, which
  // excludes overlong forms, surrogates and code points above U+10FFFF.
  size_t needed;
  unsigned char firstLow = 0x80, firstHigh = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    needed = 1;
  } else if (lead == 0xE0) {
    needed = 2;
    firstLow = 0xA0;
  } else if ((lead >= 0xE1 && lead <= 0xEC) || lead == 0xEE || lead == 0xEF) {
    needed = 2;
  } else if (lead == 0xED) {
    needed = 2;
    firstHigh = 0x9F;
  } else if (lead == 0xF0) {
    needed = 3;
    firstLow = 0x90;
  } else if (lead >= 0xF1 && lead <= 0xF3) {
    needed = 3;
  } else if (lead == 0xF4) {
    needed = 3;
    firstHigh = 0x8F;
  } else {
    length = 1; // a continuation byte, 0xC0, 0xC1 or 0xF5..0xFF
    return Utf8Status::Invalid;
  }
  for (size_t i = 1; i <= needed; ++i) {
    if (i >= n) {
      length = n;
      return Utf8Status::Incomplete;
    }
    unsigned char low = i == 1 ? firstLow : 0x80;
    unsigned char high = i == 1 ? firstHigh : 0xBF;
    if (p[i] < low || p[i] > high) {
      length = i;
      return Utf8Status::Invalid;
    }
  }
  length = needed + 1;
  return Utf8Status::Valid;
}

constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD"; // U+FFFD

/// Appends bytes[0, n) to `out` as valid UTF-8, each maximal invalid subpart
/// replaced by U+FFFD. With `atEnd` false an incomplete character at the end
/// is left unconsumed (a later token may complete it); with `atEnd` true it
/// becomes U+FFFD. Returns the number of bytes consumed.
size_t appendLossyUtf8(const char *bytes, size_t n, bool atEnd,
                       std::string &out) {
  const auto *p = reinterpret_cast<const unsigned char *>(bytes);
  size_t i = 0;
  while (i < n) {
    size_t length;
    Utf8Status status = classifyUtf8(p + i, n - i, length);
    if (status == Utf8Status::Valid) {
      out.append(bytes + i, length);
    } else if (status == Utf8Status::Invalid) {
      out.append(kReplacementCharacter);
    } else {
      if (!atEnd)
        return i;
      out.append(kReplacementCharacter);
    }
    i += length;
  }
  return n;
}

/// Byte offset of the first byte that is not part of a valid UTF-8
/// character, or npos.
size_t findInvalidUtf8(std::string_view text) {
  const auto *p = reinterpret_cast<const unsigned char *>(text.data());
  size_t i = 0;
  while (i < text.size()) {
    if (p[i] < 0x80) { // fast path for ASCII
      ++i;
      continue;
    }
    size_t length;
    if (classifyUtf8(p + i, text.size() - i, length) != Utf8Status::Valid)
      return i;
    i += length;
  }
  return std::string_view::npos;
}

void appendUtf8(uint32_t codepoint, std::string &out) {
  if (codepoint < 0x80) {
    out += static_cast<char>(codepoint);
  } else if (codepoint < 0x800) {
    out += static_cast<char>(0xC0 | (codepoint >> 6));
    out += static_cast<char>(0x80 | (codepoint & 0x3F));
  } else if (codepoint < 0x10000) {
    out += static_cast<char>(0xE0 | (codepoint >> 12));
    out += static_cast<char>(0x80 | ((codepoint >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (codepoint & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (codepoint >> 18));
    out += static_cast<char>(0x80 | ((codepoint >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((codepoint >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (codepoint & 0x3F));
  }
}

/// Code points of valid UTF-8 `text` (strings from a parsed JSON file).
std::vector<uint32_t> decodeUtf8(std::string_view text) {
  std::vector<uint32_t> codepoints;
  const auto *p = reinterpret_cast<const unsigned char *>(text.data());
  size_t i = 0;
  while (i < text.size()) {
    size_t length;
    if (classifyUtf8(p + i, text.size() - i, length) != Utf8Status::Valid)
      throw Error("invalid UTF-8 in a token string");
    uint32_t cp = length == 1 ? p[i] : p[i] & (0x7F >> length);
    for (size_t k = 1; k < length; ++k)
      cp = (cp << 6) | (p[i + k] & 0x3F);
    codepoints.push_back(cp);
    i += length;
  }
  return codepoints;
}

//===----------------------------------------------------------------------===//
// GPT-2 byte-level mapping
//===----------------------------------------------------------------------===//

/// GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
/// other 68 bytes to U+0100.. in byte order, so every byte has a visible
/// character and BPE vocabularies can be stored as text.
struct ByteLevelMap {
  std::array<uint32_t, 256> byteToCodepoint{};
  /// Inverse over U+0000..U+0143; -1 where no byte maps.
  std::array<int16_t, 0x144> codepointToByte{};

  ByteLevelMap() {
    codepointToByte.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
                       (b >= 0xAE && b <= 0xFF);
      byteToCodepoint[b] = printable ? b : next++;
      codepointToByte[byteToCodepoint[b]] = static_cast<int16_t>(b);
    }
  }

  /// The bytes a token stands for, as HF's ByteLevel decoder computes them:
  /// every character mapped back to its byte, or, if any character has no
  /// byte (added tokens such as "<｜User｜>"), the token's own UTF-8 bytes.
  std::string tokenToBytes(const std::string &token) const {
    std::string bytes;
    for (uint32_t cp : decodeUtf8(token)) {
      if (cp >= codepointToByte.size() || codepointToByte[cp] < 0)
        return token;
      bytes += static_cast<char>(codepointToByte[cp]);
    }
    return bytes;
  }
};

const ByteLevelMap &byteLevelMap() {
  static const ByteLevelMap map;
  return map;
}

//===----------------------------------------------------------------------===//
// PCRE2
//===----------------------------------------------------------------------===//

struct PcreCodeDeleter {
  void operator()(pcre2_code *code) const { pcre2_code_free(code); }
};
using PcreCode = std::unique_ptr<pcre2_code, PcreCodeDeleter>;

struct PcreMatchDataDeleter {
  void operator()(pcre2_match_data *data) const { pcre2_match_data_free(data); }
};
using PcreMatchData = std::unique_ptr<pcre2_match_data, PcreMatchDataDeleter>;

std::string pcreErrorMessage(int code) {
  PCRE2_UCHAR buffer[256];
  if (pcre2_get_error_message(code, buffer, sizeof(buffer)) < 0)
    return "PCRE2 error " + std::to_string(code);
  return reinterpret_cast<const char *>(buffer);
}

/// Compiles a Split pattern as written in the file. UTF and UCP give \p{..},
/// \s and [..] their Unicode meaning, as Oniguruma (HF's regex engine) has
/// them. `literal` is for {"String": ...} patterns, which HF escapes.
PcreCode compileSplitPattern(const std::string &pattern, bool literal,
                             const std::string &where) {
  int errorCode = 0;
  PCRE2_SIZE errorOffset = 0;
  uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
  PcreCode code(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()),
                              pattern.size(), options, &errorCode, &errorOffset,
                              nullptr));
  if (!code)
    throw Error(where + ": cannot compile regex at offset " +
                std::to_string(errorOffset) + ": " +
                pcreErrorMessage(errorCode));
  // JIT makes matching several times faster; without JIT support in the
  // library (PCRE2_ERROR_JIT_BADOPTION) the interpreter gives the same
  // matches, so a failure here is not an error.
  (void)pcre2_jit_compile(code.get(), PCRE2_JIT_COMPLETE);
  return code;
}

/// Finds the first match of `code` in subject[0, length) at or after
/// `offset`; returns false if none. The subject is one pre-token, so
/// look-ahead cannot see past it, exactly as HF runs each regex on each
/// piece separately. The caller has validated the UTF-8 once for all.
bool findMatch(const pcre2_code *code, pcre2_match_data *matchData,
               const char *subject, size_t length, size_t offset,
               size_t &matchBegin, size_t &matchEnd) {
  auto *text = reinterpret_cast<PCRE2_SPTR>(subject);
  int rc = pcre2_match(code, text, length, offset, PCRE2_NO_UTF_CHECK,
                       matchData, nullptr);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) // retry with the heap-based matcher
    rc = pcre2_match(code, text, length, offset,
                     PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, matchData, nullptr);
  if (rc == PCRE2_ERROR_NOMATCH)
    return false;
  if (rc < 0)
    throw Error("Tokenizer::encode: regex matching failed: " +
                pcreErrorMessage(rc));
  const PCRE2_SIZE *ovector = pcre2_get_ovector_pointer(matchData);
  matchBegin = ovector[0];
  matchEnd = ovector[1];
  return true;
}

//===----------------------------------------------------------------------===//
// Added-token matching
//===----------------------------------------------------------------------===//

/// A byte trie over added-token strings answering leftmost-longest queries,
/// the match kind of HF's Aho-Corasick automaton over added tokens.
class AddedTokenMatcher {
public:
  void add(const std::string &text, int32_t id) {
    if (text.empty())
      return; // can never match
    int32_t node = 0;
    for (unsigned char byte : text) {
      uint64_t key = (static_cast<uint64_t>(node) << 8) | byte;
      auto found = edges_.find(key);
      if (found == edges_.end()) {
        tokenAtNode_.push_back(-1);
        found =
            edges_.emplace(key, static_cast<int32_t>(tokenAtNode_.size() - 1))
                .first;
      }
      node = found->second;
    }
    tokenAtNode_[node] = id; // a repeated string keeps the last id, as HF
    isFirstByte_[static_cast<unsigned char>(text[0])] = true;
  }

  bool empty() const { return tokenAtNode_.size() == 1; }

  /// The leftmost, then longest, added token in text[from, size): sets
  /// `begin`, `end` and `id` and returns true, or returns false.
  bool find(std::string_view text, size_t from, size_t &begin, size_t &end,
            int32_t &id) const {
    for (size_t start = from; start < text.size(); ++start) {
      if (!isFirstByte_[static_cast<unsigned char>(text[start])])
        continue;
      int32_t node = 0;
      size_t longestEnd = 0;
      for (size_t i = start; i < text.size(); ++i) {
        uint64_t key = (static_cast<uint64_t>(node) << 8) |
                       static_cast<unsigned char>(text[i]);
        auto found = edges_.find(key);
        if (found == edges_.end())
          break;
        node = found->second;
        if (tokenAtNode_[node] >= 0) {
          longestEnd = i + 1;
          id = tokenAtNode_[node];
        }
      }
      if (longestEnd > 0) {
        begin = start;
        end = longestEnd;
        return true;
      }
    }
    return false;
  }

private:
  std::unordered_map<uint64_t, int32_t> edges_; // (node << 8 | byte) -> node
  std::vector<int32_t> tokenAtNode_{-1};        // node 0 is the root
  std::array<bool, 256> isFirstByte_{};
};

//===----------------------------------------------------------------------===//
// JSON helpers: every error names the file and the field
//===----------------------------------------------------------------------===//

Json readJsonFile(const std::filesystem::path &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(path.string() + ": cannot open file (run scripts/install-deps "
                                "to fetch the tokenizer)");
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad())
    throw Error(path.string() + ": cannot read file");
  try {
    return Json::parse(contents.str());
  } catch (const Json::exception &e) {
    throw Error(path.string() + ": invalid JSON: " + e.what());
  }
}

/// A JSON reader bound to one file, so that every message names it.
class FieldReader {
public:
  explicit FieldReader(std::filesystem::path path) : path_(std::move(path)) {}

  [[noreturn]] void fail(const std::string &field,
                         const std::string &what) const {
    throw Error(path_.string() + ": " + field + ": " + what);
  }

  const Json &member(const Json &object, const char *key,
                     const std::string &field) const {
    if (!object.is_object())
      fail(field, "expected an object");
    auto found = object.find(key);
    if (found == object.end())
      fail(join(field, key), "missing");
    return *found;
  }

  /// The member if present and not null, else nullptr.
  const Json *optionalMember(const Json &object, const char *key) const {
    if (!object.is_object())
      return nullptr;
    auto found = object.find(key);
    if (found == object.end() || found->is_null())
      return nullptr;
    return &*found;
  }

  std::string string(const Json &value, const std::string &field) const {
    if (!value.is_string())
      fail(field, "expected a string");
    return value.get<std::string>();
  }

  bool boolean(const Json &object, const char *key, bool fallback,
               const std::string &field) const {
    const Json *value = optionalMember(object, key);
    if (!value)
      return fallback;
    if (!value->is_boolean())
      fail(join(field, key), "expected true or false");
    return value->get<bool>();
  }

  int32_t tokenId(const Json &value, const std::string &field) const {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() >= INT32_MAX)
      fail(field, "expected a token id (a non-negative integer)");
    return static_cast<int32_t>(value.get<int64_t>());
  }

  const std::filesystem::path &path() const { return path_; }

  /// The name of member `key` of the object named `field` ("" for the top
  /// level).
  static std::string join(const std::string &field, const char *key) {
    return field.empty() ? key : field + "." + key;
  }

private:
  std::filesystem::path path_;
};

//===----------------------------------------------------------------------===//
// The chat template this file implements
//===----------------------------------------------------------------------===//

/// DeepSeek-V3's chat_template, verbatim from tokenizer_config.json (split at
/// tags for reading). applyChatTemplate renders it in C++ and refuses to run
/// for any other template, which it would not render faithfully.
constexpr const char *kDeepSeekV3ChatTemplate =
    "{% if not add_generation_prompt is defined %}"
    "{% set add_generation_prompt = false %}"
    "{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, "
    "is_output_first=true, system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    "{% set ns.is_first_sp = false %}"
    "{%- else %}"
    "{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] "
    "%}"
    "{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{{bos_token}}"
    "{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- set ns.is_tool = false -%}"
    "{{'<｜User｜>' + message['content']}}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}"
    "{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls']%}"
    "{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + "
    "tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + "
    "'```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + "
    "'<｜tool▁call▁end｜>'}}"
    "{%- set ns.is_first = true -%}"
    "{%- else %}"
    "{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
    "tool['function']['name'] + '\n' + '```json' + '\n' + "
    "tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none "
    "%}"
    "{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + "
    "'<｜end▁of▁sentence｜>'}}"
    "{%- set ns.is_tool = false -%}"
    "{%- else %}"
    "{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
    "{%- endif %}"
    "{%- endif %}"
    "{%- if message['role'] == 'tool' %}"
    "{%- set ns.is_tool = true -%}"
    "{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] "
    "+ '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}"
    "{%- else %}"
    "{{'\n<｜tool▁output▁begin｜>' + message['content'] + "
    "'<｜tool▁output▁end｜>'}}"
    "{%- endif %}"
    "{%- endif %}"
    "{%- endfor -%}"
    "{% if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>'}}"
    "{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}"
    "{{'<｜Assistant｜>'}}"
    "{% endif %}";

/// Strings of the template that the rendering below emits.
constexpr std::string_view kUserTag = "<｜User｜>";
constexpr std::string_view kAssistantTag = "<｜Assistant｜>";
constexpr std::string_view kEndOfSentence = "<｜end▁of▁sentence｜>";
constexpr std::string_view kToolOutputsBegin = "<｜tool▁outputs▁begin｜>";
constexpr std::string_view kToolOutputsEnd = "<｜tool▁outputs▁end｜>";
constexpr std::string_view kToolOutputBegin = "<｜tool▁output▁begin｜>";
constexpr std::string_view kToolOutputEnd = "<｜tool▁output▁end｜>";

/// Words at most this long (bytes) are cached, as HF's BPE cache does; longer
/// ones are rare and would bloat the cache.
constexpr size_t kMaxCachedWordBytes = 256;
/// The cache is emptied when it reaches this many words, bounding memory on
/// unbounded input streams.
constexpr size_t kBpeCacheCapacity = 1 << 18;

uint64_t pairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
         static_cast<uint32_t>(right);
}

} // namespace

//===----------------------------------------------------------------------===//
// Tokenizer::Impl
//===----------------------------------------------------------------------===//

struct Tokenizer::Impl {
  std::filesystem::path tokenizerPath;
  std::filesystem::path configPath;

  // Vocabulary, indexed by id. Added tokens take precedence over BPE tokens
  // of the same id, as in HF's id_to_token.
  std::vector<std::string> tokens;
  std::vector<char> hasToken;
  std::vector<char> special;
  std::vector<std::string> bytesOfToken; // what decode emits for each id
  std::unordered_map<std::string, int32_t> modelVocab;
  std::unordered_map<std::string, int32_t> addedVocab;

  // BPE: (left id, right id) -> (rank, merged id); the id of each byte's
  // byte-level character (-1 if the vocabulary lacks it).
  struct Merge {
    int32_t rank;
    int32_t mergedId;
  };
  std::unordered_map<uint64_t, Merge> merges;
  std::array<int32_t, 256> byteToId{};
  bool ignoreMerges = false;

  // Added tokens are cut out of the text in two passes, as HF's
  // AddedVocabulary::extract_and_normalize: first the tokens marked
  // "normalized": false on the raw text, then the others on the normalized
  // remainder (the normalizer is the identity here).
  AddedTokenMatcher rawAddedTokens;
  AddedTokenMatcher normalizedAddedTokens;

  // The pre-tokenizer's Split regexes, applied in order; ByteLevel follows.
  std::vector<PcreCode> splitPatterns;

  // tokenizer_config.json
  int32_t bosId = -1;
  int32_t eosId = -1;
  std::string bosToken;
  bool addBosToken = false;
  std::string chatTemplate;

  mutable std::mutex cacheMutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> bpeCache;

  void loadTokenizerJson(const std::filesystem::path &path);
  void loadModel(const FieldReader &reader, const Json &model);
  void loadAddedTokens(const FieldReader &reader, const Json &root);
  void loadPipeline(const FieldReader &reader, const Json &root);
  void loadPreTokenizer(const FieldReader &reader, const Json &preTokenizer);
  void loadConfig(const std::filesystem::path &path);

  void checkId(int32_t id, const char *function) const;
  void encodeText(std::string_view text, std::vector<int32_t> &ids) const;
  void preTokenize(size_t stage, const char *piece, size_t length,
                   pcre2_match_data *matchData,
                   std::vector<int32_t> &ids) const;
  void encodeWord(std::string_view word, std::vector<int32_t> &ids) const;
  std::vector<int32_t> mergeWord(std::string_view word) const;
};

void Tokenizer::Impl::loadTokenizerJson(const std::filesystem::path &path) {
  tokenizerPath = path;
  FieldReader reader(path);
  Json root = readJsonFile(path);
  if (!root.is_object())
    reader.fail("top level", "expected an object");
  loadModel(reader, reader.member(root, "model", ""));
  loadAddedTokens(reader, root);
  loadPipeline(reader, root);

  // Tables by id: the BPE vocabulary, then added tokens over it.
  int32_t size = 0;
  for (const auto &[token, id] : modelVocab)
    size = std::max(size, id + 1);
  for (const auto &[token, id] : addedVocab)
    size = std::max(size, id + 1);
  tokens.assign(size, std::string());
  hasToken.assign(size, 0);
  special.resize(size, 0); // loadAddedTokens set entries of added tokens
  for (const auto &[token, id] : modelVocab) {
    if (hasToken[id])
      reader.fail("model.vocab", "id " + std::to_string(id) +
                                     " is used by both \"" + tokens[id] +
                                     "\" and \"" + token + "\"");
    tokens[id] = token;
    hasToken[id] = 1;
  }
  for (const auto &[token, id] : addedVocab) {
    tokens[id] = token;
    hasToken[id] = 1;
  }
  bytesOfToken.resize(size);
  for (int32_t id = 0; id < size; ++id)
    if (hasToken[id])
      bytesOfToken[id] = byteLevelMap().tokenToBytes(tokens[id]);
}

void Tokenizer::Impl::loadModel(const FieldReader &reader, const Json &model) {
  if (!model.is_object())
    reader.fail("model", "expected an object");
  if (const Json *type = reader.optionalMember(model, "type"))
    if (reader.string(*type, "model.type") != "BPE")
      reader.fail("model.type", "\"" + type->get<std::string>() +
                                    "\" is not implemented (only \"BPE\")");
  if (const Json *dropout = reader.optionalMember(model, "dropout"))
    if (!dropout->is_number() || dropout->get<double>() != 0.0)
      reader.fail("model.dropout",
                  "BPE dropout is random and not implemented (must be null)");
  for (const char *affix : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (const Json *value = reader.optionalMember(model, affix))
      if (!reader.string(*value, std::string("model.") + affix).empty())
        reader.fail(std::string("model.") + affix,
                    "not implemented (must be null; byte-level BPE has none)");
  ignoreMerges = reader.boolean(model, "ignore_merges", false, "model");

  const Json &vocab = reader.member(model, "vocab", "model");
  if (!vocab.is_object())
    reader.fail("model.vocab", "expected an object of token: id");
  modelVocab.reserve(vocab.size());
  for (const auto &[token, id] : vocab.items())
    modelVocab.emplace(token,
                       reader.tokenId(id, "model.vocab[\"" + token + "\"]"));

  const Json &mergeList = reader.member(model, "merges", "model");
  if (!mergeList.is_array())
    reader.fail("model.merges", "expected an array");
  merges.reserve(mergeList.size());
  int32_t rank = 0;
  for (size_t i = 0; i < mergeList.size(); ++i) {
    const Json &entry = mergeList[i];
    std::string field = "model.merges[" + std::to_string(i) + "]";
    std::string left, right;
    if (entry.is_string()) {
      // Older files: "left right" strings; HF skips a "#version" header.
      const std::string &line = entry.get_ref<const std::string &>();
      if (line.rfind("#version", 0) == 0)
        continue;
      size_t space = line.find(' ');
      if (space == std::string::npos ||
          line.find(' ', space + 1) != std::string::npos)
        reader.fail(field, "expected \"left right\" with one space");
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
               entry[1].is_string()) {
      left = entry[0].get<std::string>();
      right = entry[1].get<std::string>();
    } else {
      reader.fail(field, "expected \"left right\" or [\"left\", \"right\"]");
    }
    auto lookup = [&](const std::string &token) {
      auto found = modelVocab.find(token);
      if (found == modelVocab.end())
        reader.fail(field, "\"" + token + "\" is not in model.vocab");
      return found->second;
    };
    int32_t leftId = lookup(left), rightId = lookup(right);
    int32_t mergedId = lookup(left + right);
    // A repeated pair takes its last rank, as HF's map construction does.
    merges[pairKey(leftId, rightId)] = Merge{rank, mergedId};
    ++rank;
  }

  // Each byte starts as its byte-level character's token. HF drops a
  // character missing from the vocabulary when there is no unk_token and no
  // byte_fallback; with those set it would emit other ids, not implemented.
  bool allBytesInVocab = true;
  for (int b = 0; b < 256; ++b) {
    std::string character;
    appendUtf8(byteLevelMap().byteToCodepoint[b], character);
    auto found = modelVocab.find(character);
    byteToId[b] = found == modelVocab.end() ? -1 : found->second;
    allBytesInVocab = allBytesInVocab && byteToId[b] >= 0;
  }
  if (!allBytesInVocab &&
      (reader.optionalMember(model, "unk_token") ||
       reader.boolean(model, "byte_fallback", false, "model")))
    reader.fail("model", "unk_token / byte_fallback for bytes missing from "
                         "model.vocab are not implemented");
}

void Tokenizer::Impl::loadAddedTokens(const FieldReader &reader,
                                      const Json &root) {
  const Json *list = reader.optionalMember(root, "added_tokens");
  if (!list)
    return;
  if (!list->is_array())
    reader.fail("added_tokens", "expected an array");
  std::vector<std::pair<int32_t, bool>> specials;
  for (size_t i = 0; i < list->size(); ++i) {
    const Json &token = (*list)[i];
    std::string field = "added_tokens[" + std::to_string(i) + "]";
    int32_t id =
        reader.tokenId(reader.member(token, "id", field), field + ".id");
    std::string content = reader.string(reader.member(token, "content", field),
                                        field + ".content");
    // These change how the token matches surrounding text; none of
    // DeepSeek-V3's tokens sets them, so they are refused, not ignored.
    for (const char *flag : {"single_word", "lstrip", "rstrip"})
      if (reader.boolean(token, flag, false, field))
        reader.fail(field + "." + flag, "true is not implemented");
    bool normalized = reader.boolean(token, "normalized", true, field);
    bool isSpecial = reader.boolean(token, "special", false, field);
    addedVocab[content] = id;
    (normalized ? normalizedAddedTokens : rawAddedTokens).add(content, id);
    specials.emplace_back(id, isSpecial);
  }
  for (const auto &[id, isSpecial] : specials) {
    if (static_cast<size_t>(id) >= special.size())
      special.resize(id + 1, 0);
    special[id] = isSpecial;
  }
}

void Tokenizer::Impl::loadPipeline(const FieldReader &reader,
                                   const Json &root) {
  // The normalizer must be the identity: null or an empty Sequence.
  if (const Json *normalizer = reader.optionalMember(root, "normalizer")) {
    const Json *type = reader.optionalMember(*normalizer, "type");
    const Json *children = reader.optionalMember(*normalizer, "normalizers");
    if (!type || *type != "Sequence" || !children || !children->is_array() ||
        !children->empty())
      reader.fail("normalizer",
                  "not implemented (only null or an empty Sequence)");
  }

  const Json *preTokenizer = reader.optionalMember(root, "pre_tokenizer");
  if (!preTokenizer)
    reader.fail("pre_tokenizer", "missing (a byte-level BPE needs ByteLevel)");
  loadPreTokenizer(reader, *preTokenizer);

  // A ByteLevel post-processor only adjusts offsets; ids are unchanged.
  if (const Json *post = reader.optionalMember(root, "post_processor")) {
    const Json *type = reader.optionalMember(*post, "type");
    if (!type || *type != "ByteLevel")
      reader.fail("post_processor", "not implemented (only null or ByteLevel)");
  }

  const Json *decoder = reader.optionalMember(root, "decoder");
  const Json *decoderType =
      decoder ? reader.optionalMember(*decoder, "type") : nullptr;
  if (!decoderType || *decoderType != "ByteLevel")
    reader.fail("decoder", "not implemented (only ByteLevel)");
}

void Tokenizer::Impl::loadPreTokenizer(const FieldReader &reader,
                                       const Json &preTokenizer) {
  std::vector<const Json *> steps;
  std::vector<std::string> fields;
  const Json &type = reader.member(preTokenizer, "type", "pre_tokenizer");
  if (type == "Sequence") {
    const Json &list =
        reader.member(preTokenizer, "pretokenizers", "pre_tokenizer");
    if (!list.is_array())
      reader.fail("pre_tokenizer.pretokenizers", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) {
      steps.push_back(&list[i]);
      fields.push_back("pre_tokenizer.pretokenizers[" + std::to_string(i) +
                       "]");
    }
  } else {
    steps.push_back(&preTokenizer);
    fields.push_back("pre_tokenizer");
  }

  bool sawByteLevel = false;
  for (size_t i = 0; i < steps.size(); ++i) {
    const Json &step = *steps[i];
    const std::string &field = fields[i];
    std::string stepType =
        reader.string(reader.member(step, "type", field), field + ".type");
    if (sawByteLevel)
      reader.fail(field, "steps after ByteLevel are not implemented");
    if (stepType == "Split") {
      std::string behavior = reader.string(
          reader.member(step, "behavior", field), field + ".behavior");
      if (behavior != "Isolated")
        reader.fail(field + ".behavior",
                    "\"" + behavior + "\" is not implemented (only Isolated)");
      if (reader.boolean(step, "invert", false, field))
        reader.fail(field + ".invert", "true is not implemented");
      const Json &pattern = reader.member(step, "pattern", field);
      if (const Json *regex = reader.optionalMember(pattern, "Regex"))
        splitPatterns.push_back(compileSplitPattern(
            reader.string(*regex, field + ".pattern.Regex"), false,
            reader.path().string() + ": " + field + ".pattern.Regex"));
      else if (const Json *literal = reader.optionalMember(pattern, "String"))
        splitPatterns.push_back(compileSplitPattern(
            reader.string(*literal, field + ".pattern.String"), true,
            reader.path().string() + ": " + field + ".pattern.String"));
      else
        reader.fail(field + ".pattern", "expected {\"Regex\": ...} or "
                                        "{\"String\": ...}");
    } else if (stepType == "ByteLevel") {
      // Only the byte-to-character mapping: prefix spaces and ByteLevel's own
      // GPT-2 regex split are other pipelines.
      if (reader.boolean(step, "add_prefix_space", true, field))
        reader.fail(field + ".add_prefix_space", "true is not implemented");
      if (reader.boolean(step, "use_regex", true, field))
        reader.fail(field + ".use_regex", "true is not implemented");
      sawByteLevel = true;
    } else {
      reader.fail(field + ".type", "\"" + stepType +
                                       "\" is not implemented "
                                       "(only Split, ByteLevel)");
    }
  }
  if (!sawByteLevel)
    reader.fail("pre_tokenizer", "no ByteLevel step (not a byte-level BPE)");
}

void Tokenizer::Impl::loadConfig(const std::filesystem::path &path) {
  configPath = path;
  FieldReader reader(path);
  Json root = readJsonFile(path);
  if (!root.is_object())
    reader.fail("top level", "expected an object");

  // bos_token / eos_token: a string or an AddedToken object with "content".
  auto specialToken = [&](const char *key, std::string &content) {
    const Json &value = reader.member(root, key, "");
    if (value.is_object())
      content = reader.string(reader.member(value, "content", key),
                              std::string(key) + ".content");
    else
      content = reader.string(value, key);
    auto added = addedVocab.find(content);
    if (added != addedVocab.end())
      return added->second;
    auto bpe = modelVocab.find(content);
    if (bpe != modelVocab.end())
      return bpe->second;
    reader.fail(key, "\"" + content + "\" is not a token of " +
                         tokenizerPath.filename().string());
  };
  std::string eosToken;
  bosId = specialToken("bos_token", bosToken);
  eosId = specialToken("eos_token", eosToken);
  addBosToken = reader.boolean(root, "add_bos_token", false, "");

  // chat_template: a string, or a list of {name, template} of which
  // "default" is the chat template.
  if (const Json *value = reader.optionalMember(root, "chat_template")) {
    if (value->is_array()) {
      for (const Json &named : *value)
        if (reader.optionalMember(named, "name") && named["name"] == "default")
          chatTemplate =
              reader.string(reader.member(named, "template", "chat_template[]"),
                            "chat_template[].template");
    } else {
      chatTemplate = reader.string(*value, "chat_template");
    }
  }
}

void Tokenizer::Impl::checkId(int32_t id, const char *function) const {
  if (id < 0 || static_cast<size_t>(id) >= tokens.size() || !hasToken[id])
    throw Error(std::string(function) + ": no token has id " +
                std::to_string(id) + " (vocabulary of " +
                std::to_string(tokens.size()) + " ids in " +
                tokenizerPath.string() + ")");
}

//===----------------------------------------------------------------------===//
// Encoding
//===----------------------------------------------------------------------===//

/// Calls onGap for each stretch of `text` between added tokens found by
/// `matcher` and appends each token's id to `ids`, in text order.
template <typename OnGap>
static void splitOnAddedTokens(const AddedTokenMatcher &matcher,
                               std::string_view text, std::vector<int32_t> &ids,
                               OnGap &&onGap) {
  size_t position = 0, begin, end;
  int32_t id;
  while (!matcher.empty() && matcher.find(text, position, begin, end, id)) {
    if (begin > position)
      onGap(text.substr(position, begin - position));
    ids.push_back(id);
    position = end;
  }
  if (position < text.size())
    onGap(text.substr(position));
}

void Tokenizer::Impl::encodeText(std::string_view text,
                                 std::vector<int32_t> &ids) const {
  // One match block serves every stage: a match's offsets are copied out
  // before recursing into the next stage.
  PcreMatchData matchData(pcre2_match_data_create(1, nullptr));
  if (!matchData)
    throw std::bad_alloc();
  splitOnAddedTokens(rawAddedTokens, text, ids, [&](std::string_view gap) {
    splitOnAddedTokens(
        normalizedAddedTokens, gap, ids, [&](std::string_view piece) {
          preTokenize(0, piece.data(), piece.size(), matchData.get(), ids);
        });
  });
}

/// Applies Split pattern `stage` with behaviour Isolated to one piece: every
/// match and every stretch between matches becomes a piece for the next
/// stage; after the last stage each piece is a word for BPE.
void Tokenizer::Impl::preTokenize(size_t stage, const char *piece,
                                  size_t length, pcre2_match_data *matchData,
                                  std::vector<int32_t> &ids) const {
  if (stage == splitPatterns.size()) {
    encodeWord(std::string_view(piece, length), ids);
    return;
  }
  const pcre2_code *pattern = splitPatterns[stage].get();
  size_t gapBegin = 0, searchFrom = 0, matchBegin, matchEnd;
  while (searchFrom < length && findMatch(pattern, matchData, piece, length,
                                          searchFrom, matchBegin, matchEnd)) {
    if (matchBegin > gapBegin)
      preTokenize(stage + 1, piece + gapBegin, matchBegin - gapBegin, matchData,
                  ids);
    if (matchEnd > matchBegin) {
      preTokenize(stage + 1, piece + matchBegin, matchEnd - matchBegin,
                  matchData, ids);
      gapBegin = searchFrom = matchEnd;
    } else {
      // An empty match splits the text there but yields no piece; the
      // search resumes one character on. (No DeepSeek-V3 pattern matches
      // the empty string.)
      gapBegin = matchBegin;
      if (matchBegin >= length)
        break;
      size_t characterLength;
      classifyUtf8(reinterpret_cast<const unsigned char *>(piece) + matchBegin,
                   length - matchBegin, characterLength);
      searchFrom = matchBegin + characterLength;
    }
  }
  if (gapBegin < length)
    preTokenize(stage + 1, piece + gapBegin, length - gapBegin, matchData, ids);
}

void Tokenizer::Impl::encodeWord(std::string_view word,
                                 std::vector<int32_t> &ids) const {
  if (word.size() == 1) { // one byte: no merge can apply
    if (byteToId[static_cast<unsigned char>(word[0])] >= 0)
      ids.push_back(byteToId[static_cast<unsigned char>(word[0])]);
    return;
  }
  bool cacheable = word.size() <= kMaxCachedWordBytes;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard<std::mutex> lock(cacheMutex);
    auto found = bpeCache.find(key);
    if (found != bpeCache.end()) {
      ids.insert(ids.end(), found->second.begin(), found->second.end());
      return;
    }
  }
  std::vector<int32_t> merged = mergeWord(word);
  ids.insert(ids.end(), merged.begin(), merged.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cacheMutex);
    if (bpeCache.size() >= kBpeCacheCapacity)
      bpeCache.clear();
    bpeCache.emplace(std::move(key), std::move(merged));
  }
}

/// BPE of one word as HF's Word::merge_all: a min-heap of candidate merges
/// ordered by (rank, position) over a linked list of symbols, so a word of n
/// bytes costs O(n log n). A popped candidate is stale, and skipped, if its
/// left symbol was merged away, has no right neighbour, or the pair there no
/// longer merges into the candidate's token.
std::vector<int32_t> Tokenizer::Impl::mergeWord(std::string_view word) const {
  if (ignoreMerges) { // HF: a word that is a whole token is not merged
    std::string characters;
    for (unsigned char byte : word)
      appendUtf8(byteLevelMap().byteToCodepoint[byte], characters);
    auto found = modelVocab.find(characters);
    if (found != modelVocab.end())
      return {found->second};
  }

  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool mergedAway;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (unsigned char byte : word) {
    if (byteToId[byte] < 0)
      continue; // dropped, as HF does without unk_token / byte_fallback
    auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{byteToId[byte], index - 1, -1, false});
    if (index > 0)
      symbols[index - 1].next = index;
  }

  struct Candidate {
    int32_t rank;
    int32_t position; // of the left symbol
    int32_t mergedId;
  };
  auto later = [](const Candidate &a, const Candidate &b) {
    return a.rank != b.rank ? a.rank > b.rank : a.position > b.position;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(
      later);
  auto pushCandidate = [&](int32_t position) {
    const Symbol &left = symbols[position];
    auto found = merges.find(pairKey(left.id, symbols[left.next].id));
    if (found != merges.end())
      queue.push(
          Candidate{found->second.rank, position, found->second.mergedId});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i)
    pushCandidate(i);

  while (!queue.empty()) {
    Candidate top = queue.top();
    queue.pop();
    Symbol &left = symbols[top.position];
    if (left.mergedAway || left.next < 0)
      continue;
    Symbol &right = symbols[left.next];
    auto found = merges.find(pairKey(left.id, right.id));
    if (found == merges.end() || found->second.mergedId != top.mergedId)
      continue;
    left.id = top.mergedId;
    right.mergedAway = true;
    left.next = right.next;
    if (left.next >= 0)
      symbols[left.next].prev = top.position;
    if (left.prev >= 0)
      pushCandidate(left.prev);
    if (left.next >= 0)
      pushCandidate(top.position);
  }

  std::vector<int32_t> ids;
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next)
    ids.push_back(symbols[i].id);
  return ids;
}

//===----------------------------------------------------------------------===//
// Tokenizer
//===----------------------------------------------------------------------===//

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer &&) noexcept = default;
Tokenizer &Tokenizer::operator=(Tokenizer &&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::filesystem::path &dir) {
  auto impl = std::make_unique<Impl>();
  impl->loadTokenizerJson(dir / "tokenizer.json");
  impl->loadConfig(dir / "tokenizer_config.json");
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text,
                                       bool addBos) const {
  size_t invalidAt = findInvalidUtf8(text);
  if (invalidAt != std::string_view::npos)
    throw Error("Tokenizer::encode: text is not valid UTF-8 (byte " +
                std::to_string(invalidAt) + ")");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (addBos)
    ids.push_back(impl_->bosId);
  impl_->encodeText(text, ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t> &ids,
                              bool skipSpecial) const {
  // Like HF, the bytes of all tokens are joined first and converted once, so
  // a character split across tokens decodes whole.
  std::string bytes;
  for (int32_t id : ids) {
    impl_->checkId(id, "Tokenizer::decode");
    if (!(skipSpecial && impl_->special[id]))
      bytes += impl_->bytesOfToken[id];
  }
  std::string text;
  appendLossyUtf8(bytes.data(), bytes.size(), /*atEnd=*/true, text);
  return text;
}

std::optional<std::string> Tokenizer::idToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->tokens.size() ||
      !impl_->hasToken[id])
    return std::nullopt;
  return impl_->tokens[id];
}

std::optional<int32_t> Tokenizer::tokenToId(std::string_view token) const {
  std::string key(token);
  auto added = impl_->addedVocab.find(key);
  if (added != impl_->addedVocab.end())
    return added->second;
  auto bpe = impl_->modelVocab.find(key);
  if (bpe != impl_->modelVocab.end())
    return bpe->second;
  return std::nullopt;
}

int32_t Tokenizer::vocabSize() const {
  return static_cast<int32_t>(impl_->tokens.size());
}

bool Tokenizer::isSpecial(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() &&
         impl_->special[id];
}

const std::string &Tokenizer::tokenBytes(int32_t id) const {
  impl_->checkId(id, "Tokenizer::tokenBytes");
  return impl_->bytesOfToken[id];
}

int32_t Tokenizer::bosId() const { return impl_->bosId; }
int32_t Tokenizer::eosId() const { return impl_->eosId; }
bool Tokenizer::addBosByDefault() const { return impl_->addBosToken; }

std::string
Tokenizer::applyChatTemplate(const std::vector<ChatMessage> &messages,
                             bool addGenerationPrompt) const {
  if (impl_->chatTemplate.empty())
    throw Error(impl_->configPath.string() + ": no chat_template");
  if (impl_->chatTemplate != kDeepSeekV3ChatTemplate)
    throw Error(impl_->configPath.string() +
                ": chat_template is not DeepSeek-V3's, the only template "
                "Tokenizer::applyChatTemplate renders");
  for (const ChatMessage &message : messages)
    if (message.role != "system" && message.role != "user" &&
        message.role != "assistant" && message.role != "tool")
      throw Error("Tokenizer::applyChatTemplate: unknown role \"" +
                  message.role + "\" (system, user, assistant or tool)");

  // The template's first loop: system messages, wherever they are, joined
  // by blank lines into a prompt placed right after BOS.
  std::string systemPrompt;
  bool firstSystem = true;
  for (const ChatMessage &message : messages) {
    if (message.role != "system")
      continue;
    if (!firstSystem)
      systemPrompt += "\n\n";
    systemPrompt += message.content;
    firstSystem = false;
  }

  // The second loop. `afterTool` is the template's ns.is_tool (the previous
  // message was a tool output); `firstToolOutput` is ns.is_output_first,
  // which the template never resets, so only the conversation's first tool
  // output opens with <｜tool▁outputs▁begin｜>. Assistant messages with tool
  // calls (content none) are not representable in ChatMessage and are left
  // out.
  std::string prompt = impl_->bosToken + systemPrompt;
  bool afterTool = false;
  bool firstToolOutput = true;
  for (const ChatMessage &message : messages) {
    if (message.role == "user") {
      afterTool = false;
      prompt.append(kUserTag).append(message.content);
    } else if (message.role == "assistant") {
      prompt.append(afterTool ? kToolOutputsEnd : kAssistantTag)
          .append(message.content)
          .append(kEndOfSentence);
      afterTool = false;
    } else if (message.role == "tool") {
      afterTool = true;
      if (firstToolOutput)
        prompt.append(kToolOutputsBegin);
      else
        prompt.append("\n");
      prompt.append(kToolOutputBegin)
          .append(message.content)
          .append(kToolOutputEnd);
      firstToolOutput = false;
    }
  }
  if (afterTool)
    prompt.append(kToolOutputsEnd);
  if (addGenerationPrompt && !afterTool)
    prompt.append(kAssistantTag);
  return prompt;
}

//===----------------------------------------------------------------------===//
// StreamDecoder
//===----------------------------------------------------------------------===//

StreamDecoder::StreamDecoder(const Tokenizer &tokenizer, bool skipSpecial)
    : tokenizer_(&tokenizer), skipSpecial_(skipSpecial) {}

std::string StreamDecoder::push(int32_t id) {
  const std::string &bytes = tokenizer_->tokenBytes(id); // checks the id
  if (skipSpecial_ && tokenizer_->isSpecial(id))
    return {};
  pending_ += bytes;
  std::string text;
  size_t consumed =
      appendLossyUtf8(pending_.data(), pending_.size(), /*atEnd=*/false, text);
  pending_.erase(0, consumed);
  return text;
}

std::string StreamDecoder::finish() {
  std::string text;
  appendLossyUtf8(pending_.data(), pending_.size(), /*atEnd=*/true, text);
  pending_.clear();
  return text;
}

void StreamDecoder::reset() { pending_.clear(); }

} // namespace kiln
