// Tenant isolation under a flood: tenant A is sent FLOOD_RATE requests/s (10x its limit) while
// tenant B sends a steady STEADY_RATE. Reports B's latency and refusals, and A's refusals.
//   k6 run -e TARGET=http://127.0.0.1:8080/ -e FLOOD_RATE=2000 -e STEADY_RATE=200 isolation.js
import http from 'k6/http';
import { check } from 'k6';

const target = __ENV.TARGET;
if (!/^http:\/\/(127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?\//.test(target || '')) {
  throw new Error('TARGET must be a loopback URL');
}
const duration = __ENV.DURATION || '20s';
const floodRate = Number(__ENV.FLOOD_RATE || 0);

const scenarios = {
  steady: {
    executor: 'constant-arrival-rate', exec: 'steady', rate: Number(__ENV.STEADY_RATE || 200),
    timeUnit: '1s', duration, preAllocatedVUs: 32, maxVUs: 128,
  },
};
if (floodRate > 0) {
  scenarios.flood = {
    executor: 'constant-arrival-rate', exec: 'flood', rate: floodRate,
    timeUnit: '1s', duration, preAllocatedVUs: 64, maxVUs: 256,
  };
}

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['med', 'p(99)', 'max'],
  scenarios,
  // Listed so the summary shows each scenario on its own; the bounds are not a verdict.
  thresholds: {
    'http_req_duration{scenario:steady}': ['p(99)<60000'],
    'checks{scenario:steady}': ['rate>=0'],
    'checks{scenario:flood}': ['rate>=0'],
  },
};

export function steady() {
  const r = http.get(target, { headers: { Host: 'b.example.com' } });
  check(r, { 'b answered 2xx': (x) => x.status >= 200 && x.status < 300 });
}


export function flood() {
  const r = http.get(target, { headers: { Host: 'a.example.com' } });
  check(r, { 'a answered 2xx': (x) => x.status >= 200 && x.status < 300 });
}
