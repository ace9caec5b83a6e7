# On a machine nobody set up at its console, the first SSH login runs the setup wizard.
case $- in
    *i*)
        if [ ! -e /data/appliance/setup-done ] && [ -t 0 ] && [ "$(id -un)" = admin ]; then
            echo "This appliance is not set up yet. Starting the setup wizard (Ctrl-C to leave it)."
            sudo /usr/bin/appliance-admin wizard
        fi
        ;;
esac
