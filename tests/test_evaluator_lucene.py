"""Starting the JVM of `evaluator.lucene` from several threads at once."""

import json
import subprocess
import sys

import conftest

# Runs in a fresh process: a JVM starts once per process. Thread "late" calls
# start_jvm while "early" is still looking the jar up (slowed down to widen
# that window, as on a busy worker) and sets the classpath after "early" has
# started the JVM: without a lock around check and start, it then raises
# "VM is already running, can't set classpath".
_SCRIPT = """
import json, threading, time
from evaluator import lucene

jar = lucene.anserini_jar

def slow_jar():
  time.sleep(1.5)
  return jar()

lucene.anserini_jar = slow_jar
results = {}

def start(name, delay):
  time.sleep(delay)
  try:
    jnius = lucene.start_jvm()
    system = jnius.autoclass("java.lang.System")
    results[name] = jar() in system.getProperty("java.class.path")
  except Exception as e:  # pylint: disable=broad-except
    results[name] = repr(e)

threads = [threading.Thread(target=start, args=("early", 0.0)),
           threading.Thread(target=start, args=("late", 1.0))]
for thread in threads:
  thread.start()
for thread in threads:
  thread.join()
print(json.dumps(results))
"""


def test_threads_starting_the_jvm_together_all_get_it():
  done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=conftest.REPO_ROOT,
                        capture_output=True, text=True, timeout=120,
                        check=True)
  # Both got the JVM, with the Anserini jar on its classpath.
  assert json.loads(done.stdout.splitlines()[-1]) == {"early": True,
                                                       "late": True}
