-- wrk script: replays pre-signed deliveries, one request per line of a file "<hex signature> <body>".
-- wrk's Lua has no HMAC, so bench/deliveries.py signs the bodies beforehand.
--   wrk -t T ... -s bench/signed.lua URL -- FILE split|shared T
-- split: thread i sends lines i, i+T, i+2T, ... once each (new events: no body is sent twice
--        unless the file runs out, which `wrapped` reports); shared: every thread cycles all lines.
-- done() prints one line "BENCH {json}" for the harness.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

function init(args)
   local path, mode, total = args[1], args[2] or "split", tonumber(args[3]) or 1
   local file = assert(io.open(path, "r"))
   reqs, count, pos, wrapped = {}, 0, 0, 0
   local line_no = 0
   for line in file:lines() do
      if mode ~= "split" or line_no % total == id then
         local sig, body = line:match("^(%x+) (.*)$")
         count = count + 1
         reqs[count] = wrk.format("POST", nil, {
            ["Content-Type"] = "application/json",
            ["X-CarbonPass-Signature"] = sig,
         }, body)
      end
      line_no = line_no + 1
   end
   file:close()
   assert(count > 0, "no requests for thread " .. id .. " in " .. path)
end

function request()
   pos = pos + 1
   if pos > count then
      pos = 1
      wrapped = wrapped + 1
   end
   return reqs[pos]
end

function done(summary, latency, requests)
   local wrapped_total = 0
   for _, thread in ipairs(threads) do
      wrapped_total = wrapped_total + (thread:get("wrapped") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
      '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, ' ..
      '"max_us": %d, "wrapped": %d}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99), latency.max, wrapped_total))
end
