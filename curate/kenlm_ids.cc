// KenLM scoring of lines given as vocabulary ids, many lines per call, for curate/kenlm_ids.py
// (ctypes, C ABI). Built by scripts/setup.sh against the sources of the PyPI kenlm 0.3.0 package
// (KENLM_MAX_ORDER=6, as that package's Python module). A line scores as the module's
// Model.score(line) (python/score_sentence.cc there): the <s> context, BaseScore of each word with
// the two states swapped, then </s>, added in a float in word order, so the sums are the same floats.
#include "lm/model.hh"
#include "lm/state.hh"
#include "lm/virtual_interface.hh"
#include "lm/vocab.hh"

#include <cstdint>
#include <cstdio>
#include <exception>
#include <utility>

namespace {

struct Loaded {
  lm::base::Model *model;
  lm::WordIndex bound;  // ids in [0, bound) are the vocabulary's
};

// The vocabulary's size: the base interface does not give it, both of KenLM's vocabularies do.
lm::WordIndex VocabularyBound(const lm::base::Vocabulary &vocab) {
  if (const auto *probing = dynamic_cast<const lm::ngram::ProbingVocabulary *>(&vocab)) return probing->Bound();
  if (const auto *sorted = dynamic_cast<const lm::ngram::SortedVocabulary *>(&vocab)) return sorted->Bound();
  return 0;
}

}  // namespace

// The library is compiled with -fvisibility=hidden: these functions are all it exports.
#define CURATE_EXPORT __attribute__((visibility("default")))

extern "C" {

// The model at `path` (any file kenlm.Model loads: binary probing or trie, or ARPA), loaded with
// KenLM's default Config as kenlm.Model does; NULL with KenLM's message in `error` when it fails.
CURATE_EXPORT void *curate_kenlm_load(const char *path, char *error, size_t error_size) {
  try {
    lm::ngram::Config config;
    lm::base::Model *model = lm::ngram::LoadVirtual(path, config);
    lm::WordIndex bound = VocabularyBound(model->BaseVocabulary());
    if (bound == 0) {
      delete model;
      std::snprintf(error, error_size, "unknown KenLM vocabulary type");
      return nullptr;
    }
    return new Loaded{model, bound};
  } catch (const std::exception &e) {
    std::snprintf(error, error_size, "%s", e.what());
    return nullptr;
  }
}

CURATE_EXPORT void curate_kenlm_free(void *handle) {
  Loaded *loaded = static_cast<Loaded *>(handle);
  delete loaded->model;
  delete loaded;
}

CURATE_EXPORT uint32_t curate_kenlm_vocabulary_size(const void *handle) { return static_cast<const Loaded *>(handle)->bound; }

// out[i]: the vocabulary index of word i (0 for <unk>), the words' bytes back to back in `bytes`,
// word i ending at ends[i].
CURATE_EXPORT void curate_kenlm_word_ids(const void *handle, const char *bytes, const int64_t *ends, int64_t words, uint32_t *out) {
  const lm::base::Vocabulary &vocab = static_cast<const Loaded *>(handle)->model->BaseVocabulary();
  int64_t start = 0;
  for (int64_t i = 0; i < words; ++i) {
    out[i] = vocab.Index(StringPiece(bytes + start, ends[i] - start));
    start = ends[i];
  }
}

// out[l]: log10 p(line l </s> | <s>), the words of line l being ids[line_ends[l - 1] .. line_ends[l]).
// Returns -1, or the position of the first id outside the vocabulary (lines from its own on unscored).
CURATE_EXPORT int64_t curate_kenlm_score(const void *handle, const uint32_t *ids, const int64_t *line_ends, int64_t lines,
                           float *out) {
  const Loaded &loaded = *static_cast<const Loaded *>(handle);
  const lm::base::Model &model = *loaded.model;
  const lm::WordIndex end_sentence = model.BaseVocabulary().EndSentence();
  lm::ngram::State states[2];
  int64_t start = 0;
  for (int64_t line = 0; line < lines; ++line) {
    lm::ngram::State *state = &states[0];
    lm::ngram::State *next = &states[1];
    model.BeginSentenceWrite(state);
    float total = 0.0;
    for (int64_t i = start; i < line_ends[line]; ++i) {
      if (ids[i] >= loaded.bound) return i;
      total += model.BaseScore(state, ids[i], next);
      std::swap(state, next);
    }
    total += model.BaseScore(state, end_sentence, next);
    out[line] = total;
    start = line_ends[line];
  }
  return -1;
}

}  // extern "C"
