-- wrk script for the pipelined HTTP row of benches/compare/run.py:
-- TechEmpower's plaintext pipeline.lua. Every write sends DEPTH copies of
-- the request at once (`wrk ... -s pipeline.lua -- 16`), and wrk counts
-- each response.

init = function(args)
   local r = {}
   local depth = tonumber(args[1]) or 1
   for i = 1, depth do
      r[i] = wrk.format()
   end
   req = table.concat(r)
end

request = function()
   return req
end
