# Shell defaults of the appliance (CIS Debian 12 v1.1.0 5.4.3.2, 5.4.3.3; "no logs kept").
# Read by login shells (/etc/profile); /etc/bash.bashrc repeats umask and HISTFILE for
# non-login interactive bash (added by the image's customize hook).

# 5.4.3.3 default umask: files not readable by others.
umask 027

# 5.4.3.2 idle interactive shells end after 15 minutes.
TMOUT=900
readonly TMOUT
export TMOUT

# No shell or pager history on disk (nothing of what the administrator typed is kept).
unset HISTFILE
readonly HISTFILE 2>/dev/null || true
LESSHISTFILE=-
export LESSHISTFILE

# No core dumps from the shell either (the hard limit is 0 already: limits.d/60-appliance-no-core.conf).
ulimit -c 0
