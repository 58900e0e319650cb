# shellcheck shell=sh
# Sourced by login shells: KubeRay starts Ray with `bash -lc "ray start ..."`, and a login shell
# may reset PATH from /etc/profile; keep the image's virtual environment first on it.
case ":${PATH}:" in
    *:/opt/venv/bin:*) ;;
    *) PATH="/opt/venv/bin:${PATH}" ;;
esac
export PATH
