-- wrk script for bench/cache.py: chat completions whose question the response cache sees, and a
-- count of the x-quotagate-cache header of the answers (printed by done() as one "cache:" line).
--
--   KEY            gateway key (Authorization: Bearer KEY)
--   QUESTION       the question of every request (default "Say hello in three words.")
--   QUESTIONS      several questions separated by "|": each request asks one of them at random
--                  (instead of QUESTION)
--   UNIQUE         share of requests (0 to 1) that ask a question asked nowhere else: random words,
--                  the thread and a counter, under RUN (default 0)
--   RUN            a number that makes this run's unique questions differ from other runs'
--   CACHE_CONTROL  a Cache-Control header on the requests that are not unique (e.g. no-store)
--   MODEL          the model asked for (default gpt-4o-mini); MAX_TOKENS its max_tokens (default 16)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("KEY")
if key then wrk.headers["Authorization"] = "Bearer " .. key end

local unique = tonumber(os.getenv("UNIQUE") or "0")
local run = tonumber(os.getenv("RUN") or "0")
local cache_control = os.getenv("CACHE_CONTROL")
local questions = {}
local listed = os.getenv("QUESTIONS")
if listed and listed ~= "" then
   for q in string.gmatch(listed, "[^|]+") do table.insert(questions, q) end
else
   table.insert(questions, os.getenv("QUESTION") or "Say hello in three words.")
end

-- Words from every corner of a shop's support desk and beyond (none longer than 9 letters), so that
-- two unique questions share little but their shape: counted by done(), such draws hit nothing. A
-- unique question stays under the 64 columns up to which the gateway compares questions
-- semantically (MAX_QUESTION_WIDTH in quotagate/cache/_cache.py): 9 + 5 + 3 * 10 + 20 at most.
local words = {
   "parcel", "invoice", "warranty", "umbrella", "kitchen", "violin", "mortgage", "glacier", "printer",
   "passport", "tomato", "satellite", "carpet", "helmet", "orchid", "ledger", "battery", "tractor",
   "lantern", "pyramid", "blanket", "compass", "dolphin", "refund", "ticket", "volcano", "saddle",
   "harbour", "jacket", "microwave", "crystal", "bicycle", "license", "meadow", "trumpet", "castle",
   "engine", "password", "flamingo", "coupon", "telescope", "marble", "cactus", "router", "balcony",
   "wallet", "cathedral", "pillow", "tunnel", "wheat", "diamond", "keyboard", "lobster", "furnace",
   "anchor", "pharmacy", "rocket", "shampoo", "canyon", "ribbon", "scooter", "monsoon", "pottery",
   "receipt", "sandwich", "zipper", "orchestra", "vaccine", "chimney", "emerald", "ferry", "gadget",
   "hammock", "igloo", "jungle", "kettle", "lagoon", "magnet", "noodle", "oyster", "pepper", "quartz",
   "radish", "sunflower", "tornado", "uniform", "velvet", "walrus", "yogurt", "zeppelin", "asteroid",
   "biscuit", "candle", "dinosaur", "fountain", "giraffe", "hurricane", "iceberg", "jasmine", "koala",
   "lemonade", "mushroom", "necklace", "ostrich", "penguin", "quiver", "rainbow", "skeleton",
   "trombone", "unicorn", "vinegar", "waffle", "xylophone", "yacht", "zucchini",
}
local verbs = {
   "fix", "return", "paint", "cancel", "borrow", "measure", "clean", "insure", "ship", "rename",
   "freeze", "upgrade", "recycle", "translate", "weigh", "polish", "replace", "rent", "bake", "print",
}

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_number", #threads)
end

local function escape(text)
   return (string.gsub(text, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end))
end

local model = os.getenv("MODEL") or "gpt-4o-mini"
local max_tokens = os.getenv("MAX_TOKENS") or "16"

local function body(question)
   return '{"model": "' .. model .. '", "messages": [{"role": "user", "content": "' .. escape(question)
      .. '"}], "max_tokens": ' .. max_tokens .. '}'
end

local fixed = {}
local counter = 0

function init(args)
   hits, semantic, misses, none, failed = 0, 0, 0, 0, 0
   math.randomseed(run * 1000 + (thread_number or 0))
   local headers = {}
   for name, value in pairs(wrk.headers) do headers[name] = value end
   if cache_control then headers["Cache-Control"] = cache_control end
   for i, q in ipairs(questions) do fixed[i] = wrk.format(nil, nil, headers, body(q)) end
end

function request()
   if unique > 0 and math.random() < unique then
      counter = counter + 1
      local question = string.format("%s the %s %s %s %d-%d-%d?", verbs[math.random(#verbs)],
         words[math.random(#words)], words[math.random(#words)], words[math.random(#words)],
         run, thread_number or 0, counter)
      return wrk.format(nil, nil, nil, body(question))
   end
   return fixed[math.random(#fixed)]
end

function response(status, headers, body)
   if status ~= 200 then
      failed = failed + 1
      return
   end
   local kind = headers["x-quotagate-cache"]
   if kind == "hit" then hits = hits + 1
   elseif kind == "semantic-hit" then semantic = semantic + 1
   elseif kind == "miss" then misses = misses + 1
   else none = none + 1 end
end

function done(summary, latency, requests)
   local total = { hits = 0, semantic = 0, misses = 0, none = 0, failed = 0 }
   for _, thread in ipairs(threads) do
      for name, _ in pairs(total) do total[name] = total[name] + (thread:get(name) or 0) end
   end
   io.write(string.format("cache: hit=%d semantic-hit=%d miss=%d none=%d non-200=%d\n",
      total.hits, total.semantic, total.misses, total.none, total.failed))
end
