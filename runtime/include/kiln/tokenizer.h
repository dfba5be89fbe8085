//===- kiln/tokenizer.h - DeepSeek-V3 tokenizer and chat format -----------===//
//
// A C++ reading of a Hugging Face `tokenizer.json` (byte-level BPE) and its
// `tokenizer_config.json`, producing the same ids as HF `tokenizers` for
// DeepSeek-V3:
//
//   1. added tokens (<｜begin▁of▁sentence｜>, <｜User｜>, ...) are cut out of
//      the text first, leftmost-longest, the non-normalized ones before the
//      normalized ones, as HF's AddedVocabulary does;
//   2. the rest goes through the pre-tokenizer: a Sequence of Split regexes
//      (run with PCRE2 exactly as written in the file) and the ByteLevel
//      byte-to-unicode mapping;
//   3. each pre-token is merged by BPE in merge-rank order.
//
// Decoding maps tokens back to bytes and replaces invalid UTF-8 by U+FFFD the
// way Rust's String::from_utf8_lossy does; StreamDecoder does the same one id
// at a time. applyChatTemplate renders DeepSeek-V3's Jinja chat template.
//
// Only the pipeline components DeepSeek-V3's files use are implemented; any
// other component makes load() throw kiln::Error naming the file and field,
// so a different tokenizer is never silently mis-tokenized.
//
// Known differences from HF, both from the regex engine (HF uses Oniguruma):
// Debian 12's PCRE2 10.42 has Unicode 14 tables, so characters assigned in
// Unicode 15 and 16 (e.g. the emoji U+1FA77 and U+1FAE8, some CJK extension
// ideographs) are unassigned to \p{..} and may split differently; and PCRE2's
// \s also matches U+180E MONGOLIAN VOWEL SEPARATOR. Every other code point
// was checked against HF tokenizers 0.23.2 in several contexts.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TOKENIZER_H
#define KILN_TOKENIZER_H

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

/// One message of a conversation. `role` is "system", "user", "assistant" or
/// "tool" (a tool's output); `content` is UTF-8 text.
struct ChatMessage {
  std::string role;
  std::string content;
};

/// A loaded tokenizer. Immutable after load() except for an internal cache of
/// BPE results, which is guarded, so one Tokenizer may be shared by threads.
class Tokenizer {
public:
  /// Reads `dir/tokenizer.json` and `dir/tokenizer_config.json`. Throws
  /// kiln::Error naming the file for a missing or unreadable file, malformed
  /// JSON, a missing or ill-typed field, or a pipeline component that is not
  /// implemented.
  static Tokenizer load(const std::filesystem::path &dir);

  Tokenizer(Tokenizer &&) noexcept;
  Tokenizer &operator=(Tokenizer &&) noexcept;
  ~Tokenizer();

  /// Token ids of UTF-8 `text`, with the BOS id first if `addBos`. Added
  /// tokens written in the text (e.g. "<｜User｜>") become their ids. Throws
  /// kiln::Error if `text` is not valid UTF-8.
  std::vector<int32_t> encode(std::string_view text, bool addBos = false) const;

  /// UTF-8 text of `ids`; byte sequences that are not valid UTF-8 become
  /// U+FFFD. With `skipSpecial`, special added tokens (BOS, EOS, ...) are
  /// left out. Throws kiln::Error for an id outside [0, vocabSize()).
  std::string decode(const std::vector<int32_t> &ids,
                     bool skipSpecial = false) const;

  /// The token string of `id` as stored in tokenizer.json (byte-level form,
  /// e.g. "Ġthe" for " the"), or nullopt if no token has that id.
  std::optional<std::string> idToToken(int32_t id) const;
  /// The id of a token string in byte-level form (added tokens first, then
  /// the BPE vocabulary), or nullopt.
  std::optional<int32_t> tokenToId(std::string_view token) const;
  /// One past the largest token id (BPE vocabulary and added tokens).
  int32_t vocabSize() const;
  /// Whether `id` is an added token marked "special" (skipped by decode with
  /// skipSpecial).
  bool isSpecial(int32_t id) const;

  /// The raw bytes `id` stands for in decoded text (may be part of a UTF-8
  /// character). Throws kiln::Error for an id outside [0, vocabSize()).
  const std::string &tokenBytes(int32_t id) const;

  /// Ids of tokenizer_config.json's bos_token and eos_token.
  int32_t bosId() const;
  int32_t eosId() const;
  /// tokenizer_config.json's add_bos_token: whether prompts should start
  /// with BOS (encode's `addBos` is the caller's choice).
  bool addBosByDefault() const;

  /// The prompt text DeepSeek-V3's chat_template renders for `messages`,
  /// ending with "<｜Assistant｜>" if `addGenerationPrompt` (and the last
  /// message is not a tool output). Encode it with addBos = false: it begins
  /// with the BOS token's text. Assistant tool calls are not supported (a
  /// ChatMessage has no tool_calls). Throws kiln::Error for an unknown role,
  /// or if tokenizer_config.json's chat_template is not the DeepSeek-V3
  /// template this function implements.
  std::string applyChatTemplate(const std::vector<ChatMessage> &messages,
                                bool addGenerationPrompt) const;

private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Incremental decoding for generation: push() ids one at a time and get the
/// text they complete. A token may end inside a multi-byte UTF-8 character
/// (an emoji can span several tokens); those bytes are held back until the
/// character completes, so every returned string is valid UTF-8. The
/// concatenation of all push() results and a final finish() equals
/// tokenizer.decode(all ids, skipSpecial).
class StreamDecoder {
public:
  /// `tokenizer` must outlive the decoder.
  explicit StreamDecoder(const Tokenizer &tokenizer, bool skipSpecial = false);

  /// Feeds one id; returns the newly completed text (possibly empty). Throws
  /// kiln::Error for an id outside [0, vocabSize()).
  std::string push(int32_t id);
  /// Ends the stream: returns U+FFFD if an incomplete character is held back
  /// (as decode would), else "", and resets for a new stream.
  std::string finish();
  /// Drops any held-back bytes and starts a new stream.
  void reset();
  /// Whether bytes of an incomplete character are held back.
  bool hasPending() const { return !pending_.empty(); }

private:
  const Tokenizer *tokenizer_;
  bool skipSpecial_;
  std::string pending_; // at most 3 bytes: a valid prefix of one character
};

} // namespace kiln

#endif // KILN_TOKENIZER_H
