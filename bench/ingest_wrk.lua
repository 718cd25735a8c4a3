-- wrk script for bench/ingest_wrk.py (not meant to be run by hand).
--
-- BENCH_MODE=ingest: POST /api/v1/reports, cycling through the hosts of BENCH_DATA, one line per host:
--   <ingest token> TAB <report JSON before the run_id> TAB <report JSON after the run_id>
-- Every request gets a fresh run_id "<BENCH_NONCE>-<thread>-4000-8000-<counter>", so each one is a new
-- report, not a duplicate.
-- BENCH_MODE=floor: GET BENCH_PATH (a static file of the same server).
-- BENCH_PAUSE_MS > 0: each connection waits before each request (wrk's delay()), in both modes, a time
-- drawn uniformly from 0 to twice BENCH_PAUSE_MS: N connections then model N agents sending about one
-- request per pause (plus the answer's latency) at independent times, as agents with a splay do. (A
-- constant pause keeps the connections that start together in step: they arrive as one burst a pause.)
-- At the end it prints one line "RESULT k=v ..." that the driver parses.

local mode = os.getenv("BENCH_MODE") or "floor"
local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
  table.insert(threads, thread)
end

local hosts = {}
local counter = 0
local nonce = os.getenv("BENCH_NONCE") or "00000000"
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local floor_path = os.getenv("BENCH_PATH") or "/static/ui.css"
c201, c200, cother = 0, 0, 0
local pause_ms = tonumber(os.getenv("BENCH_PAUSE_MS") or "0")

if pause_ms > 0 then
  function delay()
    return math.random(0, 2 * pause_ms)
  end
end

function init(args)
  math.randomseed(os.time() * 100 + (tid or 0))  -- each thread's own draws of the pauses
  if mode ~= "ingest" then
    return
  end
  local f = assert(io.open(os.getenv("BENCH_DATA"), "r"))
  for line in f:lines() do
    local token, before, after = line:match("^([^\t]+)\t([^\t]*)\t([^\t]*)$")
    assert(token, "bad line in BENCH_DATA")
    table.insert(hosts, {
      headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"},
      before = before, after = after,
    })
  end
  f:close()
end

function request()
  if mode ~= "ingest" then
    return wrk.format("GET", floor_path)
  end
  counter = counter + 1
  -- thread t of n takes hosts t, t+n, t+2n, ...: a host is played by one thread, one report after
  -- another, as one agent sends them (threads sharing hosts put a host twice into one batch)
  local h = hosts[((counter * nthreads + tid - 1) % #hosts) + 1]
  local run_id = string.format("%s-%04x-4000-8000-%012x", nonce, tid, counter)
  return wrk.format("POST", "/api/v1/reports", h.headers, h.before .. run_id .. h.after)
end

function response(status, headers, body)
  if status == 201 then
    c201 = c201 + 1
  elseif status == 200 then
    c200 = c200 + 1
  else
    cother = cother + 1
  end
end

function done(summary, latency, requests)
  local s201, s200, sother = 0, 0, 0
  for _, t in ipairs(threads) do
    s201 = s201 + t:get("c201")
    s200 = s200 + t:get("c200")
    sother = sother + t:get("cother")
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d s201=%d s200=%d sother=%d p50_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
    summary.requests, summary.duration, s201, s200, sother, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.timeout))
end
