/// Auto-generated bindings for a pre-instantiated version of a
/// component which implements the world `cache`.
///
/// This structure is created through [`CachePre::new`] which
/// takes a [`InstancePre`](wasmtime::component::InstancePre) that
/// has been created through a [`Linker`](wasmtime::component::Linker).
///
/// For more information see [`Cache`] as well.
pub struct CachePre<T: 'static> {
    instance_pre: wasmtime::component::InstancePre<T>,
    indices: CacheIndices,
}
impl<T: 'static> Clone for CachePre<T> {
    fn clone(&self) -> Self {
        Self {
            instance_pre: self.instance_pre.clone(),
            indices: self.indices.clone(),
        }
    }
}
impl<_T: 'static> CachePre<_T> {
    /// Creates a new copy of `CachePre` bindings which can then
    /// be used to instantiate into a particular store.
    ///
    /// This method may fail if the component behind `instance_pre`
    /// does not have the required exports.
    pub fn new(
        instance_pre: wasmtime::component::InstancePre<_T>,
    ) -> wasmtime::Result<Self> {
        let indices = CacheIndices::new(&instance_pre)?;
        Ok(Self { instance_pre, indices })
    }
    pub fn engine(&self) -> &wasmtime::Engine {
        self.instance_pre.engine()
    }
    pub fn instance_pre(&self) -> &wasmtime::component::InstancePre<_T> {
        &self.instance_pre
    }
    /// Instantiates a new instance of [`Cache`] within the
    /// `store` provided.
    ///
    /// This function will use `self` as the pre-instantiated
    /// instance to perform instantiation. Afterwards the preloaded
    /// indices in `self` are used to lookup all exports on the
    /// resulting instance.
    pub fn instantiate(
        &self,
        mut store: impl wasmtime::AsContextMut<Data = _T>,
    ) -> wasmtime::Result<Cache> {
        let mut store = store.as_context_mut();
        let instance = self.instance_pre.instantiate(&mut store)?;
        self.indices.load(&mut store, &instance)
    }
}
impl<_T: Send + 'static> CachePre<_T> {
    /// Same as [`Self::instantiate`], except with `async`.
    pub async fn instantiate_async(
        &self,
        mut store: impl wasmtime::AsContextMut<Data = _T>,
    ) -> wasmtime::Result<Cache> {
        let mut store = store.as_context_mut();
        let instance = self.instance_pre.instantiate_async(&mut store).await?;
        self.indices.load(&mut store, &instance)
    }
}
/// Auto-generated bindings for index of the exports of
/// `cache`.
///
/// This is an implementation detail of [`CachePre`] and can
/// be constructed if needed as well.
///
/// For more information see [`Cache`] as well.
#[derive(Clone)]
pub struct CacheIndices {}
/// Auto-generated bindings for an instance a component which
/// implements the world `cache`.
///
/// This structure can be created through a number of means
/// depending on your requirements and what you have on hand:
///
/// * The most convenient way is to use
///   [`Cache::instantiate`] which only needs a
///   [`Store`], [`Component`], and [`Linker`].
///
/// * Alternatively you can create a [`CachePre`] ahead of
///   time with a [`Component`] to front-load string lookups
///   of exports once instead of per-instantiation. This
///   method then uses [`CachePre::instantiate`] to
///   create a [`Cache`].
///
/// * If you've instantiated the instance yourself already
///   then you can use [`Cache::new`].
///
/// These methods are all equivalent to one another and move
/// around the tradeoff of what work is performed when.
///
/// [`Store`]: wasmtime::Store
/// [`Component`]: wasmtime::component::Component
/// [`Linker`]: wasmtime::component::Linker
pub struct Cache {}
const _: () = {
    impl CacheIndices {
        /// Creates a new copy of `CacheIndices` bindings which can then
        /// be used to instantiate into a particular store.
        ///
        /// This method may fail if the component does not have the
        /// required exports.
        pub fn new<_T>(
            _instance_pre: &wasmtime::component::InstancePre<_T>,
        ) -> wasmtime::Result<Self> {
            let _component = _instance_pre.component();
            let _instance_type = _instance_pre.instance_type();
            Ok(CacheIndices {})
        }
        /// Uses the indices stored in `self` to load an instance
        /// of [`Cache`] from the instance provided.
        ///
        /// Note that at this time this method will additionally
        /// perform type-checks of all exports.
        pub fn load(
            &self,
            mut store: impl wasmtime::AsContextMut,
            instance: &wasmtime::component::Instance,
        ) -> wasmtime::Result<Cache> {
            let _ = &mut store;
            let _instance = instance;
            Ok(Cache {})
        }
    }
    impl Cache {
        /// Convenience wrapper around [`CachePre::new`] and
        /// [`CachePre::instantiate`].
        pub fn instantiate<_T>(
            store: impl wasmtime::AsContextMut<Data = _T>,
            component: &wasmtime::component::Component,
            linker: &wasmtime::component::Linker<_T>,
        ) -> wasmtime::Result<Cache> {
            let pre = linker.instantiate_pre(component)?;
            CachePre::new(pre)?.instantiate(store)
        }
        /// Convenience wrapper around [`CacheIndices::new`] and
        /// [`CacheIndices::load`].
        pub fn new(
            mut store: impl wasmtime::AsContextMut,
            instance: &wasmtime::component::Instance,
        ) -> wasmtime::Result<Cache> {
            let indices = CacheIndices::new(&instance.instance_pre(&store))?;
            indices.load(&mut store, instance)
        }
        /// Convenience wrapper around [`CachePre::new`] and
        /// [`CachePre::instantiate_async`].
        pub async fn instantiate_async<_T>(
            store: impl wasmtime::AsContextMut<Data = _T>,
            component: &wasmtime::component::Component,
            linker: &wasmtime::component::Linker<_T>,
        ) -> wasmtime::Result<Cache>
        where
            _T: Send,
        {
            let pre = linker.instantiate_pre(component)?;
            CachePre::new(pre)?.instantiate_async(store).await
        }
        pub fn add_to_linker<T, D>(
            linker: &mut wasmtime::component::Linker<T>,
            host_getter: fn(&mut T) -> D::Data<'_>,
        ) -> wasmtime::Result<()>
        where
            D: foo::foo::store::HostWithStore<T> + foo::foo::store::HostWithStore<T>,
            for<'a> D::Data<'a>: foo::foo::store::Host + foo::foo::store::Host,
            T: 'static,
        {
            foo::foo::store::add_to_linker_instance::<
                T,
                D,
            >(&mut linker.instance("hot-cache")?, host_getter)?;
            foo::foo::store::add_to_linker_instance::<
                T,
                D,
            >(&mut linker.instance("durable")?, host_getter)?;
            Ok(())
        }
    }
};
pub mod foo {
    pub mod foo {
        #[allow(clippy::all)]
        pub mod store {
            #[allow(unused_imports)]
            use wasmtime::component::__internal::Box;
            pub trait HostWithStore<T>: wasmtime::component::HasData {}
            impl<H: ?Sized, T> HostWithStore<T> for H
            where
                H: wasmtime::component::HasData,
            {}
            pub trait Host {
                fn get(
                    &mut self,
                    key: wasmtime::component::__internal::String,
                ) -> Option<wasmtime::component::__internal::String>;
                fn set(
                    &mut self,
                    key: wasmtime::component::__internal::String,
                    value: wasmtime::component::__internal::String,
                ) -> ();
            }
            impl<_T: Host + ?Sized> Host for &mut _T {
                fn get(
                    &mut self,
                    key: wasmtime::component::__internal::String,
                ) -> Option<wasmtime::component::__internal::String> {
                    Host::get(*self, key)
                }
                fn set(
                    &mut self,
                    key: wasmtime::component::__internal::String,
                    value: wasmtime::component::__internal::String,
                ) -> () {
                    Host::set(*self, key, value)
                }
            }
            pub fn add_to_linker_instance<T, D>(
                inst: &mut wasmtime::component::LinkerInstance<'_, T>,
                host_getter: fn(&mut T) -> D::Data<'_>,
            ) -> wasmtime::Result<()>
            where
                D: HostWithStore<T>,
                for<'a> D::Data<'a>: Host,
                T: 'static,
            {
                inst.func_wrap(
                    "get",
                    move |
                        mut caller: wasmtime::StoreContextMut<'_, T>,
                        (arg0,): (wasmtime::component::__internal::String,)|
                    {
                        let host = &mut host_getter(caller.data_mut());
                        let r = Host::get(host, arg0);
                        Ok((r,))
                    },
                )?;
                inst.func_wrap(
                    "set",
                    move |
                        mut caller: wasmtime::StoreContextMut<'_, T>,
                        (
                            arg0,
                            arg1,
                        ): (
                            wasmtime::component::__internal::String,
                            wasmtime::component::__internal::String,
                        )|
                    {
                        let host = &mut host_getter(caller.data_mut());
                        let r = Host::set(host, arg0, arg1);
                        Ok(r)
                    },
                )?;
                Ok(())
            }
            pub fn add_to_linker<T, D>(
                linker: &mut wasmtime::component::Linker<T>,
                host_getter: fn(&mut T) -> D::Data<'_>,
            ) -> wasmtime::Result<()>
            where
                D: HostWithStore<T>,
                for<'a> D::Data<'a>: Host,
                T: 'static,
            {
                let mut inst = linker.instance("foo:foo/store")?;
                add_to_linker_instance::<T, D>(&mut inst, host_getter)
            }
        }
    }
}
