"""Starting the JVM of `evaluator.lucene` from several threads at once."""

import json
import subprocess
import sys

import conftest

# Runs in a fresh process: a JVM starts once per process. Thread "early"
# looks the jar up (as a slow worker may) and stays there until thread "late"
# is inside start_jvm too; only then does "early" start the JVM. Without a lock
# around check and start, "late" also finds the JVM down, looks the jar up
# (held there until "early" is done) and sets the classpath of the running
# JVM: "VM is already running, can't set classpath".
_SCRIPT = """
import json, sys, threading, time
from evaluator import lucene

TIMEOUT = 60
jar = lucene.anserini_jar
early_in_jar, early_done = threading.Event(), threading.Event()

def inside_start_jvm(thread):
  frame = sys._current_frames().get(thread.ident)
  while frame is not None and frame.f_code is not lucene.start_jvm.__code__:
    frame = frame.f_back
  return frame is not None

def held_jar():
  if threading.current_thread() is threads[0]:
    early_in_jar.set()
    deadline = time.monotonic() + TIMEOUT
    while not inside_start_jvm(threads[1]):
      if time.monotonic() > deadline:
        raise TimeoutError("late never called start_jvm")
      time.sleep(0.01)
  elif not early_done.wait(TIMEOUT):
    raise TimeoutError("early never started the JVM")
  return jar()

lucene.anserini_jar = held_jar
results = {}

def start(name):
  try:
    if name == "late" and not early_in_jar.wait(TIMEOUT):
      raise TimeoutError("early never looked the jar up")
    jnius = lucene.start_jvm()
    system = jnius.autoclass("java.lang.System")
    results[name] = jar() in system.getProperty("java.class.path")
  except Exception as e:  # pylint: disable=broad-except
    results[name] = repr(e)
  finally:
    if name == "early":
      early_done.set()

threads = [threading.Thread(target=start, args=(name,))
           for name in ("early", "late")]
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
