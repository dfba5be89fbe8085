//===- TokenizerTest.cpp - DeepSeek-V3 tokenizer, streaming, chat format --===//
//
// Ids must equal Hugging Face's exactly: the references are
// test/golden/tokenizer_reference_js.json (HF tokenizers' Node binding and
// transformers.js, committed) and, once recorded on the GPU machine,
// test/golden/tokenizer_golden.json (Python HF). The DeepSeek-V3 files come
// from scripts/install-deps; small hand-written tokenizer.json files cover
// BPE rank order, added-token matching and load errors.
//
//===----------------------------------------------------------------------===//

#include "kiln/tokenizer.h"
#include "kiln/error.h"

#include "TestSupport.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>
#include <thread>

namespace {

using kiln::testing::ScratchDir;

namespace fs = std::filesystem;
using Json = nlohmann::json;
using Ids = std::vector<int32_t>;

const fs::path kSourceDir = KILN_SOURCE_DIR;
const fs::path kTokenizerDir = kSourceDir / ".deps" / "deepseek-v3-tokenizer";
const fs::path kJsReference =
    kSourceDir / "test" / "golden" / "tokenizer_reference_js.json";
const fs::path kHfGolden =
    kSourceDir / "test" / "golden" / "tokenizer_golden.json";

// Ids of DeepSeek-V3's tokenizer.json used below.
constexpr int32_t kBos = 0;                   // <｜begin▁of▁sentence｜>
constexpr int32_t kEos = 1;                   // <｜end▁of▁sentence｜>
constexpr int32_t kUser = 128803;             // <｜User｜>
constexpr int32_t kAssistant = 128804;        // <｜Assistant｜>
constexpr int32_t kEot = 128805;              // <|EOT|>
constexpr int32_t kFirstPlaceholder = 128000; // <｜place▁holder▁no▁0｜>
constexpr int32_t kDeepSeekVocabSize = 128815;

/// Strict UTF-8 check written independently of the library's decoder.
bool isValidUtf8(const std::string &text) {
  size_t i = 0;
  while (i < text.size()) {
    auto byte = static_cast<unsigned char>(text[i]);
    uint32_t codepoint;
    size_t extra;
    if (byte < 0x80) {
      codepoint = byte, extra = 0;
    } else if ((byte & 0xE0) == 0xC0) {
      codepoint = byte & 0x1F, extra = 1;
    } else if ((byte & 0xF0) == 0xE0) {
      codepoint = byte & 0x0F, extra = 2;
    } else if ((byte & 0xF8) == 0xF0) {
      codepoint = byte & 0x07, extra = 3;
    } else {
      return false;
    }
    if (i + extra >= text.size()) // truncated
      return false;
    for (size_t k = 1; k <= extra; ++k) {
      auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80)
        return false;
      codepoint = (codepoint << 6) | (next & 0x3F);
    }
    static const uint32_t kMinimum[] = {0, 0x80, 0x800, 0x10000};
    if (codepoint < kMinimum[extra] || codepoint > 0x10FFFF ||
        (codepoint >= 0xD800 && codepoint <= 0xDFFF))
      return false;
    i += extra + 1;
  }
  return true;
}

/// GPT-2's bytes_to_unicode, written out again for building vocabularies.
std::string byteLevelCharacter(int byte) {
  bool printable = (byte >= '!' && byte <= '~') ||
                   (byte >= 0xA1 && byte <= 0xAC) || (byte >= 0xAE);
  int codepoint = byte;
  if (!printable) {
    codepoint = 256;
    for (int b = 0; b < byte; ++b)
      if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE))
        ++codepoint;
  }
  std::string utf8;
  if (codepoint < 0x80) {
    utf8 += static_cast<char>(codepoint);
  } else {
    utf8 += static_cast<char>(0xC0 | (codepoint >> 6));
    utf8 += static_cast<char>(0x80 | (codepoint & 0x3F));
  }
  return utf8;
}

//===----------------------------------------------------------------------===//
// Reference files
//===----------------------------------------------------------------------===//

struct ReferenceString {
  std::string text;
  Ids ids;
};

struct ReferenceChat {
  std::vector<kiln::ChatMessage> messages;
  bool addGenerationPrompt;
  std::string text;
  Ids ids;
};

struct Reference {
  std::vector<ReferenceString> strings;
  std::vector<ReferenceChat> chats;
};

Reference readReference(const fs::path &path) {
  std::ifstream in(path);
  if (!in)
    throw std::runtime_error("cannot open " + path.string());
  Json root = Json::parse(in);
  Reference reference;
  for (const Json &entry : root.at("strings"))
    reference.strings.push_back(
        {entry.at("text").get<std::string>(), entry.at("ids").get<Ids>()});
  for (const Json &entry : root.at("chat")) {
    ReferenceChat chat;
    for (const Json &message : entry.at("messages"))
      chat.messages.push_back({message.at("role").get<std::string>(),
                               message.at("content").get<std::string>()});
    chat.addGenerationPrompt = entry.at("add_generation_prompt").get<bool>();
    chat.text = entry.at("text").get<std::string>();
    chat.ids = entry.at("ids").get<Ids>();
    reference.chats.push_back(std::move(chat));
  }
  return reference;
}

/// Reference strings from every reference file present (the JS one is
/// committed; the HF golden once recorded).
std::vector<ReferenceString> allReferenceStrings() {
  std::vector<ReferenceString> strings = readReference(kJsReference).strings;
  if (fs::exists(kHfGolden)) {
    auto golden = readReference(kHfGolden).strings;
    strings.insert(strings.end(), golden.begin(), golden.end());
  }
  return strings;
}

//===----------------------------------------------------------------------===//
// Fixtures on the DeepSeek-V3 tokenizer
//===----------------------------------------------------------------------===//

class DeepSeekV3Fixture : public ::testing::Test {
protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kTokenizerDir / "tokenizer.json") &&
                fs::exists(kTokenizerDir / "tokenizer_config.json"))
        << "DeepSeek-V3 tokenizer files are missing from " << kTokenizerDir
        << ": run scripts/install-deps";
  }

  /// Loaded once for all tests (about a quarter second).
  static const kiln::Tokenizer &tokenizer() {
    static const kiln::Tokenizer loaded = kiln::Tokenizer::load(kTokenizerDir);
    return loaded;
  }

  Ids encode(const std::string &text, bool addBos = false) {
    return tokenizer().encode(text, addBos);
  }
};

class TokenizerTest : public DeepSeekV3Fixture {};
class StreamDecoderTest : public DeepSeekV3Fixture {};
class ChatTemplateTest : public DeepSeekV3Fixture {};

void expectMatchesReference(const kiln::Tokenizer &tokenizer,
                            const fs::path &path) {
  Reference reference = readReference(path);
  // tokenizer_strings.json has 111 strings; a truncated file must not pass.
  ASSERT_GE(reference.strings.size(), 100u) << path;
  for (const ReferenceString &entry : reference.strings)
    EXPECT_EQ(tokenizer.encode(entry.text), entry.ids)
        << "text: " << Json(entry.text).dump() << " (" << path.filename()
        << ")";
}

TEST_F(TokenizerTest, MatchesJsReferenceIds) {
  expectMatchesReference(tokenizer(), kJsReference);
}

TEST_F(TokenizerTest, MatchesHfGoldenIds) {
  if (!fs::exists(kHfGolden))
    GTEST_SKIP()
        << kHfGolden << " not recorded yet: run "
        << "test/golden/make_tokenizer_golden.py where HF is installed";
  expectMatchesReference(tokenizer(), kHfGolden);
}

TEST_F(TokenizerTest, DecodeInvertsEncode) {
  for (const ReferenceString &entry : allReferenceStrings()) {
    Ids ids = encode(entry.text);
    EXPECT_EQ(tokenizer().decode(ids), entry.text)
        << "text: " << Json(entry.text).dump();
  }
}

TEST_F(TokenizerTest, VocabularyAndConfig) {
  const kiln::Tokenizer &t = tokenizer();
  EXPECT_EQ(t.vocabSize(), kDeepSeekVocabSize);
  EXPECT_EQ(t.bosId(), kBos);
  EXPECT_EQ(t.eosId(), kEos);
  EXPECT_TRUE(t.addBosByDefault());
  EXPECT_EQ(t.idToToken(kBos), "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(t.idToToken(kEos), "<｜end▁of▁sentence｜>");
  EXPECT_EQ(t.tokenToId("<｜User｜>"), kUser);
  EXPECT_EQ(t.tokenToId("<｜Assistant｜>"), kAssistant);
  EXPECT_EQ(t.tokenToId("<|EOT|>"), kEot);
  EXPECT_EQ(t.tokenToId("<｜place▁holder▁no▁0｜>"), kFirstPlaceholder);
  EXPECT_EQ(t.tokenToId("Ġthe"), 270); // " the" in byte-level form
  EXPECT_EQ(t.idToToken(270), "Ġthe");
  EXPECT_EQ(t.tokenToId("no such token"), std::nullopt);
  EXPECT_EQ(t.idToToken(-1), std::nullopt);
  EXPECT_EQ(t.idToToken(kDeepSeekVocabSize), std::nullopt);

  // Special per the "special" flag of added_tokens: BOS/EOS/<|EOT|> and the
  // placeholders are; the chat markers are not (HF keeps them on decode).
  EXPECT_TRUE(t.isSpecial(kBos));
  EXPECT_TRUE(t.isSpecial(kEot));
  EXPECT_TRUE(t.isSpecial(kFirstPlaceholder));
  EXPECT_FALSE(t.isSpecial(kUser));
  EXPECT_FALSE(t.isSpecial(270));

  // Every byte has a one-character token that decodes to that byte.
  for (int byte = 0; byte < 256; ++byte) {
    std::optional<int32_t> id = t.tokenToId(byteLevelCharacter(byte));
    ASSERT_TRUE(id.has_value()) << "byte " << byte;
    EXPECT_EQ(t.tokenBytes(*id), std::string(1, static_cast<char>(byte)));
  }
}

TEST_F(TokenizerTest, EveryAddedTokenInTextIsItsId) {
  // HF cuts added tokens out of the text before pre-tokenization, so each
  // one, alone or between words, is exactly its id.
  int added = 0;
  for (int32_t id = 0; id < tokenizer().vocabSize(); ++id) {
    std::string token = *tokenizer().idToToken(id);
    if (token.rfind("<｜", 0) != 0 && token != "<|EOT|>")
      continue;
    ++added;
    EXPECT_EQ(encode(token), Ids{id}) << token;
    Ids embedded = encode("a" + token + "b");
    EXPECT_EQ(embedded, (Ids{67, id, 68})) << token;
  }
  EXPECT_EQ(added, 818); // all added_tokens of DeepSeek-V3's file
}

TEST_F(TokenizerTest, AddBosPrependsBos) {
  EXPECT_EQ(encode("", true), Ids{kBos});
  Ids plain = encode("Hello world");
  Ids withBos = encode("Hello world", true);
  ASSERT_EQ(withBos.size(), plain.size() + 1);
  EXPECT_EQ(withBos[0], kBos);
  EXPECT_TRUE(std::equal(plain.begin(), plain.end(), withBos.begin() + 1));
}

TEST_F(TokenizerTest, DigitsSplitInGroupsOfThree) {
  // The first Split regex is \p{N}{1,3}: digits group from the left.
  Ids ids = encode("1234567");
  std::vector<std::string> pieces;
  for (int32_t id : ids)
    pieces.push_back(tokenizer().tokenBytes(id));
  EXPECT_EQ(pieces, (std::vector<std::string>{"123", "456", "7"}));
}

TEST_F(TokenizerTest, EncodeRejectsInvalidUtf8) {
  // A stray byte, a truncated character, an overlong form, a surrogate, a
  // code point above U+10FFFF, a lone continuation byte.
  const std::vector<std::string> invalid = {
      "\xFF",         "abc\xC3",          "\xC0\xAF",
      "\xED\xA0\x80", "\xF4\x90\x80\x80", "ok\x80"};
  for (size_t i = 0; i < invalid.size(); ++i)
    EXPECT_THROW(tokenizer().encode(invalid[i]), kiln::Error) << "case " << i;
}

TEST_F(TokenizerTest, DecodeJoinsBytesAcrossTokensAndReplacesInvalid) {
  auto byteId = [&](int byte) {
    return *tokenizer().tokenToId(byteLevelCharacter(byte));
  };
  // "你" is E4 BD A0: three byte tokens decode to one character.
  EXPECT_EQ(tokenizer().decode({byteId(0xE4), byteId(0xBD), byteId(0xA0)}),
            "你");
  // An incomplete or invalid sequence becomes U+FFFD, as from_utf8_lossy.
  EXPECT_EQ(tokenizer().decode({byteId(0xE4), byteId(0xBD)}), "\uFFFD");
  EXPECT_EQ(tokenizer().decode({byteId(0xE4), byteId('a')}), "\uFFFDa");
  // One U+FFFD per maximal invalid subpart (E4 BD is one), not per byte.
  EXPECT_EQ(tokenizer().decode({byteId(0xE4), byteId(0xBD), byteId('a')}),
            "\uFFFDa");
  EXPECT_EQ(tokenizer().decode({byteId(0xFF), byteId(0xFF)}), "\uFFFD\uFFFD");
}

TEST_F(TokenizerTest, DecodeSkipsOnlySpecialTokens) {
  Ids ids = encode("<｜begin▁of▁sentence｜><｜User｜>hi<｜end▁of▁sentence｜>");
  ASSERT_EQ(ids.front(), kBos);
  EXPECT_EQ(tokenizer().decode(ids),
            "<｜begin▁of▁sentence｜><｜User｜>hi<｜end▁of▁sentence｜>");
  EXPECT_EQ(tokenizer().decode(ids, /*skipSpecial=*/true), "<｜User｜>hi");
}

TEST_F(TokenizerTest, DecodeRejectsUnknownIds) {
  EXPECT_THROW(tokenizer().decode({-1}), kiln::Error);
  EXPECT_THROW(tokenizer().decode({kDeepSeekVocabSize}), kiln::Error);
  EXPECT_THROW(tokenizer().tokenBytes(kDeepSeekVocabSize), kiln::Error);
}

/// About 1 MB of text mixing prose, code, numbers, CJK, emoji and
/// whitespace, with enough distinct words that the BPE cache does not do all
/// the work.
std::string megabyteOfText() {
  const std::vector<std::string> words = {"the",
                                          "tokenizer",
                                          "compiles",
                                          "DeepSeek",
                                          "mixture",
                                          "experts",
                                          "for",
                                          "(int i = 0; i < n; ++i)",
                                          "return",
                                          "{",
                                          "}",
                                          "数据",
                                          "模型",
                                          "こんにちは",
                                          "안녕",
                                          "😀",
                                          "👨‍👩‍👧",
                                          "naïve",
                                          "Straße",
                                          "—",
                                          "...",
                                          "\"quoted\"",
                                          "x_1",
                                          "مرحبا",
                                          "שלום",
                                          "α",
                                          "∑",
                                          "#",
                                          "<tag>"};
  const std::vector<std::string> separators = {" ",  " ",  " ",  "\n",  ", ",
                                               ". ", "\t", "  ", "\r\n"};
  std::mt19937 random(12345);
  std::string text;
  while (text.size() < (1u << 20)) {
    switch (random() % 4) {
    case 0:
      text += std::to_string(random() % 10000000);
      break;
    case 1: { // a made-up word, so that not every word is cached
      int length = 2 + random() % 8;
      for (int k = 0; k < length; ++k)
        text += static_cast<char>('a' + random() % 26);
      break;
    }
    default:
      text += words[random() % words.size()];
    }
    text += separators[random() % separators.size()];
  }
  return text;
}

TEST_F(TokenizerTest, EncodesAMegabyteQuickly) {
  std::string text = megabyteOfText();
  tokenizer(); // load outside the timed region
  auto start = std::chrono::steady_clock::now();
  Ids ids = encode(text);
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  std::cout << "[ timing   ] encoded " << text.size() << " bytes into "
            << ids.size() << " ids in " << seconds << " s\n";
  // Release builds take about 0.1 s on one core; the bound leaves room for
  // slow CI machines but catches quadratic behaviour.
  EXPECT_LT(seconds, 3.0);
  EXPECT_EQ(tokenizer().decode(ids), text);
}

TEST_F(TokenizerTest, ConcurrentEncodesAgree) {
  // The BPE cache is shared; concurrent encodes must not disturb each other.
  std::vector<ReferenceString> strings = readReference(kJsReference).strings;
  std::atomic<int> mismatches{0};
  auto work = [&] {
    for (int round = 0; round < 20; ++round)
      for (const ReferenceString &entry : strings)
        if (tokenizer().encode(entry.text) != entry.ids)
          ++mismatches;
  };
  std::thread other(work);
  work();
  other.join();
  EXPECT_EQ(mismatches.load(), 0);
}

//===----------------------------------------------------------------------===//
// StreamDecoder
//===----------------------------------------------------------------------===//

TEST_F(StreamDecoderTest, ConcatenationEqualsDecode) {
  for (bool skipSpecial : {false, true}) {
    for (const ReferenceString &entry : allReferenceStrings()) {
      Ids ids = encode("<｜begin▁of▁sentence｜>" + entry.text);
      kiln::StreamDecoder stream(tokenizer(), skipSpecial);
      std::string streamed;
      for (int32_t id : ids) {
        std::string piece = stream.push(id);
        EXPECT_TRUE(isValidUtf8(piece)) << Json(entry.text).dump();
        streamed += piece;
      }
      streamed += stream.finish();
      EXPECT_EQ(streamed, tokenizer().decode(ids, skipSpecial))
          << Json(entry.text).dump();
    }
  }
}

TEST_F(StreamDecoderTest, HoldsBackSplitCharacters) {
  // A ZWJ family emoji is several characters of 3-4 bytes each; its tokens
  // end inside characters.
  const std::string family = "👨‍👩‍👧‍👦";
  Ids ids = encode(family);
  ASSERT_GT(ids.size(), 1u);
  kiln::StreamDecoder stream(tokenizer());
  std::string streamed;
  bool heldBack = false;
  for (int32_t id : ids) {
    std::string piece = stream.push(id);
    EXPECT_TRUE(isValidUtf8(piece));
    heldBack = heldBack || stream.hasPending();
    streamed += piece;
  }
  EXPECT_TRUE(heldBack) << "no token of the emoji ended mid-character";
  EXPECT_FALSE(stream.hasPending());
  EXPECT_EQ(streamed, family);
  EXPECT_EQ(stream.finish(), "");

  // Byte by byte: nothing until the last byte of 😀 (F0 9F 98 80).
  auto byteId = [&](int byte) {
    return *tokenizer().tokenToId(byteLevelCharacter(byte));
  };
  EXPECT_EQ(stream.push(byteId(0xF0)), "");
  EXPECT_EQ(stream.push(byteId(0x9F)), "");
  EXPECT_EQ(stream.push(byteId(0x98)), "");
  EXPECT_TRUE(stream.hasPending());
  EXPECT_EQ(stream.push(byteId(0x80)), "😀");
  EXPECT_FALSE(stream.hasPending());
}

TEST_F(StreamDecoderTest, InvalidBytesBecomeReplacementCharacters) {
  auto byteId = [&](int byte) {
    return *tokenizer().tokenToId(byteLevelCharacter(byte));
  };
  kiln::StreamDecoder stream(tokenizer());
  // A byte that can never start a character is replaced at once.
  EXPECT_EQ(stream.push(byteId(0xFF)), "\uFFFD");
  // A started character broken by ASCII: U+FFFD, then the ASCII.
  EXPECT_EQ(stream.push(byteId(0xE4)), "");
  EXPECT_EQ(stream.push(byteId('a')), "\uFFFDa");
  EXPECT_EQ(stream.push(byteId(0xE4)), "");
  EXPECT_EQ(stream.push(byteId(0xBD)), "");
  EXPECT_EQ(stream.push(byteId('a')), "\uFFFDa"); // one U+FFFD for E4 BD
  // A character still incomplete at the end: finish() flushes U+FFFD, as
  // decode() does, and resets.
  EXPECT_EQ(stream.push(byteId(0xE4)), "");
  EXPECT_EQ(stream.finish(), "\uFFFD");
  EXPECT_FALSE(stream.hasPending());
  EXPECT_EQ(tokenizer().decode(
                {byteId(0xFF), byteId(0xE4), byteId('a'), byteId(0xE4)}),
            "\uFFFD\uFFFDa\uFFFD");
  // reset() drops held bytes without output.
  EXPECT_EQ(stream.push(byteId(0xE4)), "");
  stream.reset();
  EXPECT_EQ(stream.push(byteId('b')), "b");
  EXPECT_THROW(stream.push(-5), kiln::Error);
}

//===----------------------------------------------------------------------===//
// Chat template
//===----------------------------------------------------------------------===//

void expectChatsMatch(const kiln::Tokenizer &tokenizer, const fs::path &path) {
  Reference reference = readReference(path);
  ASSERT_GE(reference.chats.size(), 9u) << path; // as in tokenizer_strings

  for (const ReferenceChat &chat : reference.chats) {
    std::string text =
        tokenizer.applyChatTemplate(chat.messages, chat.addGenerationPrompt);
    EXPECT_EQ(text, chat.text) << path.filename();
    EXPECT_EQ(tokenizer.encode(text), chat.ids) << Json(chat.text).dump();
  }
}

TEST_F(ChatTemplateTest, MatchesJsReference) {
  expectChatsMatch(tokenizer(), kJsReference);
}

TEST_F(ChatTemplateTest, MatchesHfGolden) {
  if (!fs::exists(kHfGolden))
    GTEST_SKIP() << kHfGolden << " not recorded yet";
  expectChatsMatch(tokenizer(), kHfGolden);
}

TEST_F(ChatTemplateTest, RendersTurnsAndSystemPrompts) {
  // Written from the template: system prompts are joined by a blank line
  // and placed after BOS wherever they occur; each assistant turn ends with
  // EOS; the generation prompt opens an assistant turn.
  std::vector<kiln::ChatMessage> messages = {{"system", "Be brief."},
                                             {"user", "Hi"},
                                             {"assistant", "Hello."},
                                             {"system", "Use English."},
                                             {"user", "Why?"}};
  EXPECT_EQ(tokenizer().applyChatTemplate(messages, true),
            "<｜begin▁of▁sentence｜>Be brief.\n\nUse English.<｜User｜>Hi"
            "<｜Assistant｜>Hello.<｜end▁of▁sentence｜><｜User｜>Why?"
            "<｜Assistant｜>");
  Ids ids = encode(tokenizer().applyChatTemplate(messages, false));
  EXPECT_EQ(ids.front(), kBos);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), kUser), 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), kBos), 1);
  EXPECT_NE(ids.back(), kAssistant);
  // No messages (HF refuses them; the template itself renders BOS).
  EXPECT_EQ(tokenizer().applyChatTemplate({}, true),
            "<｜begin▁of▁sentence｜><｜Assistant｜>");
}

TEST_F(ChatTemplateTest, RejectsUnknownRoles) {
  EXPECT_THROW(tokenizer().applyChatTemplate({{"developer", "x"}}, true),
               kiln::Error);
}

//===----------------------------------------------------------------------===//
// Small tokenizer.json files: BPE order, added tokens, load errors
//===----------------------------------------------------------------------===//

/// A byte-level BPE over ids 0..255 (the bytes) plus "bc" = 256, "ab" = 257,
/// "abc" = 258, with merge ranks b+c < a+b < a+bc, a Split into letters,
/// digits and the rest, and three added tokens.
Json tinyTokenizerJson() {
  Json vocab = Json::object();
  for (int byte = 0; byte < 256; ++byte)
    vocab[byteLevelCharacter(byte)] = byte;
  vocab["bc"] = 256;
  vocab["ab"] = 257;
  vocab["abc"] = 258;
  Json addedToken = {
      {"single_word", false}, {"lstrip", false}, {"rstrip", false}};
  Json eot = addedToken, sep = addedToken, sepSep = addedToken;
  eot.update({{"id", 259},
              {"content", "<eot>"},
              {"normalized", false},
              {"special", true}});
  sep.update({{"id", 260},
              {"content", "<sep>"},
              {"normalized", true},
              {"special", false}});
  sepSep.update({{"id", 261},
                 {"content", "<sep><sep>"},
                 {"normalized", true},
                 {"special", false}});
  return {{"version", "1.0"},
          {"added_tokens", {eot, sep, sepSep}},
          {"normalizer", nullptr},
          {"pre_tokenizer",
           {{"type", "Sequence"},
            {"pretokenizers",
             {{{"type", "Split"},
               {"pattern", {{"Regex", "\\p{L}+|\\p{N}+"}}},
               {"behavior", "Isolated"},
               {"invert", false}},
              {{"type", "ByteLevel"},
               {"add_prefix_space", false},
               {"trim_offsets", true},
               {"use_regex", false}}}}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"vocab", vocab},
            {"merges", {"b c", "a b", "a bc"}}}}};
}

Json tinyConfigJson() {
  return {{"bos_token", "<eot>"},
          {"eos_token", {{"__type", "AddedToken"}, {"content", "<eot>"}}},
          {"add_bos_token", false}};
}

void writeTokenizer(const ScratchDir &dir, const Json &tokenizer,
                    const Json &config) {
  dir.write("tokenizer.json", tokenizer.dump());
  dir.write("tokenizer_config.json", config.dump());
}

/// Expects load(dir) to throw kiln::Error whose message has every one of
/// `needles`.
void expectLoadError(const fs::path &dir,
                     const std::vector<std::string> &needles) {
  try {
    kiln::Tokenizer::load(dir);
    ADD_FAILURE() << "load succeeded; expected an error with " << needles[0];
  } catch (const kiln::Error &error) {
    std::string message = error.what();
    for (const std::string &needle : needles)
      EXPECT_NE(message.find(needle), std::string::npos)
          << "message: " << message << "\nlacks: " << needle;
  }
}

TEST(TokenizerFilesTest, BpeMergesByRank) {
  ScratchDir dir;
  writeTokenizer(dir, tinyTokenizerJson(), tinyConfigJson());
  kiln::Tokenizer tokenizer = kiln::Tokenizer::load(dir.path());
  // "abc": b+c (rank 0) before a+b (rank 1), then a+bc; "abd" has only a+b.
  // The space is its own piece (byte 32).
  EXPECT_EQ(tokenizer.encode("abc ab bcbc abd"),
            (Ids{258, 32, 257, 32, 256, 256, 32, 257, 'd'}));
  EXPECT_EQ(tokenizer.decode({258, 32, 256}), "abc bc");
  EXPECT_EQ(tokenizer.vocabSize(), 262);

  // Merges given as pairs mean the same.
  Json pairs = tinyTokenizerJson();
  // (Json::array: nested braces of two strings would make an object.)
  pairs["model"]["merges"] =
      Json::array({Json::array({"b", "c"}), Json::array({"a", "b"}),
                   Json::array({"a", "bc"})});
  ScratchDir pairDir;
  writeTokenizer(pairDir, pairs, tinyConfigJson());
  EXPECT_EQ(kiln::Tokenizer::load(pairDir.path()).encode("abc ab bcbc abd"),
            tokenizer.encode("abc ab bcbc abd"));
}

TEST(TokenizerFilesTest, AddedTokensMatchLeftmostLongest) {
  ScratchDir dir;
  writeTokenizer(dir, tinyTokenizerJson(), tinyConfigJson());
  kiln::Tokenizer tokenizer = kiln::Tokenizer::load(dir.path());
  EXPECT_EQ(tokenizer.encode("x<sep><sep><sep><eot>ab"),
            (Ids{'x', 261, 260, 259, 257}));
  EXPECT_EQ(tokenizer.bosId(), 259);
  EXPECT_EQ(tokenizer.encode("ab", true), (Ids{259, 257}));
  // <eot> is special, <sep> is not.
  EXPECT_EQ(tokenizer.decode({259, 260, 257}, true), "<sep>ab");
  // No chat_template in this config.
  EXPECT_THROW(tokenizer.applyChatTemplate({{"user", "hi"}}, true),
               kiln::Error);
}

TEST(TokenizerFilesTest, MissingFilesAreNamed) {
  ScratchDir dir;
  expectLoadError(dir.path() / "absent",
                  {"tokenizer.json", "scripts/install-deps"});
  dir.write("tokenizer.json", tinyTokenizerJson().dump());
  expectLoadError(dir.path(), {"tokenizer_config.json", "cannot open"});
}

TEST(TokenizerFilesTest, MalformedJsonIsNamed) {
  ScratchDir dir;
  dir.write("tokenizer.json", "{ \"model\": ");
  dir.write("tokenizer_config.json", tinyConfigJson().dump());
  expectLoadError(dir.path(),
                  {(dir.path() / "tokenizer.json").string(), "invalid JSON"});
  dir.write("tokenizer.json", tinyTokenizerJson().dump());
  dir.write("tokenizer_config.json", "[1, 2");
  expectLoadError(dir.path(), {"tokenizer_config.json", "invalid JSON"});
}

TEST(TokenizerFilesTest, MissingModelIsNamed) {
  ScratchDir dir;
  Json noModel = tinyTokenizerJson();
  noModel.erase("model");
  writeTokenizer(dir, noModel, tinyConfigJson());
  expectLoadError(dir.path(), {"tokenizer.json", "model", "missing"});
}

TEST(TokenizerFilesTest, BadFieldsAreNamed) {
  struct Case {
    const char *what;
    std::function<void(Json &tokenizer, Json &config)> mutate;
    std::vector<std::string> needles;
  };
  std::vector<Case> cases = {
      {"vocab of wrong type",
       [](Json &t, Json &) { t["model"]["vocab"] = Json::array(); },
       {"tokenizer.json", "model.vocab"}},
      {"merge of unknown tokens",
       [](Json &t, Json &) { t["model"]["merges"][0] = "q z9"; },
       {"tokenizer.json", "model.merges[0]", "z9"}},
      {"merge without a space",
       [](Json &t, Json &) { t["model"]["merges"][1] = "ab"; },
       {"model.merges[1]"}},
      {"unimplemented model",
       [](Json &t, Json &) { t["model"]["type"] = "WordPiece"; },
       {"model.type", "WordPiece"}},
      {"unimplemented pre-tokenizer",
       [](Json &t, Json &) {
         t["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Whitespace"}};
       },
       {"pre_tokenizer.pretokenizers[0]", "Whitespace"}},
      {"unimplemented split behaviour",
       [](Json &t, Json &) {
         t["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
       },
       {"behavior", "Removed"}},
      {"regex that does not compile",
       [](Json &t, Json &) {
         t["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(ab";
       },
       {"tokenizer.json", "pattern.Regex", "compile"}},
      {"no byte-level step",
       [](Json &t, Json &) { t["pre_tokenizer"]["pretokenizers"].erase(1); },
       {"pre_tokenizer", "ByteLevel"}},
      {"missing decoder",
       [](Json &t, Json &) { t["decoder"] = nullptr; },
       {"tokenizer.json", "decoder"}},
      {"added token with lstrip",
       [](Json &t, Json &) { t["added_tokens"][1]["lstrip"] = true; },
       {"added_tokens[1].lstrip"}},
      {"added token without an id",
       [](Json &t, Json &) { t["added_tokens"][0].erase("id"); },
       {"added_tokens[0].id", "missing"}},
      {"bos token not in the vocabulary",
       [](Json &, Json &c) { c["bos_token"] = "<nope>"; },
       {"tokenizer_config.json", "bos_token", "<nope>"}},
      {"missing eos token",
       [](Json &, Json &c) { c.erase("eos_token"); },
       {"tokenizer_config.json", "eos_token", "missing"}},
  };
  for (const Case &testCase : cases) {
    SCOPED_TRACE(testCase.what);
    Json tokenizer = tinyTokenizerJson(), config = tinyConfigJson();
    testCase.mutate(tokenizer, config);
    ScratchDir dir;
    writeTokenizer(dir, tokenizer, config);
    expectLoadError(dir.path(), testCase.needles);
  }
}

TEST(TokenizerFilesTest, OtherChatTemplatesAreRefused) {
  ScratchDir dir;
  Json config = tinyConfigJson();
  config["chat_template"] = "{{ messages[0]['content'] }}";
  writeTokenizer(dir, tinyTokenizerJson(), config);
  kiln::Tokenizer tokenizer = kiln::Tokenizer::load(dir.path());
  try {
    tokenizer.applyChatTemplate({{"user", "hi"}}, true);
    ADD_FAILURE() << "a foreign chat template was rendered";
  } catch (const kiln::Error &error) {
    EXPECT_NE(std::string(error.what()).find("chat_template"),
              std::string::npos)
        << error.what();
  }
}

} // namespace
