-- wrk script: POST a small chat completion; a streamed one when STREAM is set. KEY comes from the environment.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("KEY")
if key then wrk.headers["Authorization"] = "Bearer " .. key end
local stream = os.getenv("STREAM") and ', "stream": true' or ""
wrk.body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in three words."}], "max_tokens": 16' .. stream .. '}'
