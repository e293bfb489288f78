-- wrk script: PUT one pixel per request on one image, with no Content-Type (as the original's
-- load script does). Usage: wrk -t2 -c64 -d10s --latency -s bench/put.lua http://127.0.0.1:8000/images/bench
wrk.method = "PUT"
local n = 0
request = function()
  n = n + 1
  local x, y = n % 64, math.floor(n / 64) % 64
  local body = string.format('{"command":{"command_type":"draw","values":[[%d,%d,%d,%d,%d]]}}', x, y, n % 256, 0, 0)
  return wrk.format(nil, nil, nil, body)
end
