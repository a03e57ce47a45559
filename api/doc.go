// Package api holds the OpenAI wire types that the worker's HTTP server and
// the disaggregation proxy share: the completions and chat requests (with the
// vLLM and TensorRT-LLM extensions serving clients send, and TensorRT-LLM's
// disaggregated_params), their answers and streamed chunks, the model list,
// and the OpenAI error object. DecodeJSON is the one way a request body is
// read: a JSON object, valid UTF-8, unknown fields ignored, every failure a
// 400 error naming the field.
package api
