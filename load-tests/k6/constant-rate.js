// A fixed request rate against one tenant, reporting p50/p99 and failures. Used by
// load-tests/reload-p99.sh; loopback only.
//   k6 run -e TARGET=http://127.0.0.1:8080/ -e HOST=t0.example.com -e RATE=4000 -e DURATION=20s constant-rate.js
import http from 'k6/http';
import { check } from 'k6';

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['med', 'p(90)', 'p(99)', 'max'],
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 4000),
      timeUnit: '1s',
      duration: __ENV.DURATION || '20s',
      preAllocatedVUs: 64,
      maxVUs: 256,
    },
  },
};

const target = __ENV.TARGET;
if (!/^http:\/\/(127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?\//.test(target || '')) {
  throw new Error('TARGET must be a loopback URL');
}
const params = { headers: { Host: __ENV.HOST || 't0.example.com' } };

export default function () {
  const res = http.get(target, params);
  check(res, { '2xx': (r) => r.status >= 200 && r.status < 300 });
}
