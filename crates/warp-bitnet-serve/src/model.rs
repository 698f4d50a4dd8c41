//! What the server needs from a model and its tokenizer: two small traits, so that the
//! scheduler runs the same on the real engine and on the deterministic model of
//! [`crate::testing`].

/// The error a model or tokenizer reports; the server shows its text to the client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One request's sampling settings, already checked by the HTTP layer against OpenAI's ranges.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy); higher flattens the distribution.
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to `top_p`.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Divides the logits of tokens already in the sequence (1 = off).
    pub repetition_penalty: f32,
    /// The random stream's seed: the same seed and request give the same text.
    pub seed: u64,
}

/// A model with a fixed pool of KV-cache slots, each holding one independent sequence.
///
/// The scheduler owns the model on its own thread and is its only caller.
pub trait Model: Send + 'static {
    /// One request's sampler (its random stream and settings).
    type Sampler: Send;

    /// Number of logits per position.
    fn vocab_size(&self) -> usize;
    /// Number of KV-cache slots: the most sequences decoded together.
    fn slots(&self) -> usize;
    /// The most tokens one slot holds (prompt plus generated).
    fn max_context(&self) -> usize;
    /// Empties `slot` so that a new sequence can start in it.
    fn reset_slot(&mut self, slot: usize);
    /// Appends each entry's tokens to its slot (a prompt chunk, or one token when decoding),
    /// runs the model once for all of them, and writes each entry's last-position logits into
    /// `logits[i * vocab .. (i + 1) * vocab]`. On error every slot is left unchanged.
    fn forward(&mut self, batch: &[(usize, &[u32])], logits: &mut [f32]) -> Result<(), BoxError>;
    /// A sampler for one request.
    fn sampler(&self, sampling: &Sampling) -> Result<Self::Sampler, BoxError>;
    /// Picks the next token from one row of logits (which it may modify); `history` is the
    /// sequence so far (prompt and generated tokens), for the repetition penalty.
    fn sample(sampler: &mut Self::Sampler, logits: &mut [f32], history: &[u32]) -> u32;
    /// [`Model::forward`], then the next token of each entry with a sampler into `tokens[i]`
    /// (`histories[i]` its sequence so far); entries without one (a prompt chunk whose
    /// sequence goes on) get an unspecified token and make no draw. The default samples
    /// each row of logits on the host; a model may draw where its logits are (a GPU).
    fn forward_sample(
        &mut self,
        batch: &[(usize, &[u32])],
        samplers: &mut [Option<&mut Self::Sampler>],
        histories: &[&[u32]],
        tokens: &mut [u32],
    ) -> Result<(), BoxError> {
        let vocab = self.vocab_size();
        let mut logits = vec![0f32; batch.len() * vocab];
        self.forward(batch, &mut logits)?;
        for (i, row) in logits.chunks_exact_mut(vocab).enumerate() {
            if let Some(s) = &mut samplers[i] {
                tokens[i] = Self::sample(s, row, histories[i]);
            }
        }
        Ok(())
    }
}

/// Text to token ids and back, shared by every HTTP handler (hence `Sync`).
pub trait Codec: Send + Sync + 'static {
    /// Token ids of `text`; `add_special_tokens` adds the model's BOS where it uses one.
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, BoxError>;
    /// Text of `ids`, special tokens left out. Incomplete UTF-8 at the end shows as U+FFFD.
    fn decode(&self, ids: &[u32]) -> Result<String, BoxError>;
    /// The model's chat template applied to `(role, content)` messages, ending with the
    /// assistant's turn opened.
    fn chat_prompt(&self, messages: &[(String, String)]) -> Result<String, BoxError>;
    /// Tokens that end a sequence.
    fn eos_token_ids(&self) -> &[u32];
    /// False where the model has no tokenizer: prompts must then be token ids.
    fn has_tokenizer(&self) -> bool {
        true
    }
}

/// The codec of a model without a tokenizer (random weights for benchmarks): prompts must be
/// token ids, and generated text is each token id in decimal after a space (`" 17 4 902"`).
#[derive(Clone, Debug)]
pub struct TokenIdCodec {
    eos: Vec<u32>,
}

impl TokenIdCodec {
    /// A codec that ends sequences on `eos` token ids.
    pub fn new(eos: Vec<u32>) -> Self {
        Self { eos }
    }
}

impl Codec for TokenIdCodec {
    fn encode(&self, _text: &str, _add_special_tokens: bool) -> Result<Vec<u32>, BoxError> {
        Err("this model has no tokenizer: send the prompt as an array of token ids".into())
    }

    fn decode(&self, ids: &[u32]) -> Result<String, BoxError> {
        Ok(ids.iter().map(|id| format!(" {id}")).collect())
    }

    fn chat_prompt(&self, _messages: &[(String, String)]) -> Result<String, BoxError> {
        Err("this model has no tokenizer, hence no chat template: use /v1/completions with token ids".into())
    }

    fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    fn has_tokenizer(&self) -> bool {
        false
    }
}
