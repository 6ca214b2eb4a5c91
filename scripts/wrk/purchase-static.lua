-- wrk script: the same POST purchase on every request (one buyer token from
-- $TOKEN, sale $SALE_ID). With no request() function wrk sends a pre-built
-- request, so the load tool spends as little CPU as for `GET /healthz` and
-- the comparison measures the server. A sold-out flood from one buyer is
-- answered from the same in-memory path as from many (the sold-out flag is
-- checked before the per-user rate limit).
--   TOKEN=$(flashsale token --user u) SALE_ID=123 wrk -t1 -c64 -d10s -s scripts/wrk/purchase-static.lua http://127.0.0.1:8080
wrk.method = "POST"
wrk.path = "/api/v1/sales/" .. os.getenv("SALE_ID") .. "/purchase"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
